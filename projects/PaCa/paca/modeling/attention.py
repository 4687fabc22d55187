"""Patch-to-cluster attention (paper §3.1-3.2, eqs. (1)-(2))."""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


class PaCaAttention(nn.Module):
    """Multi-head attention whose queries are the N patches and whose keys and values are
    M cluster tokens Z = LayerNorm(Cᵀ·X); with ``num_clusters`` 0 it is plain patch-to-patch
    MHSA (keys and values from the patches), as in the last stage of the released models.

    Queries and keys/values have separate projections (``q``, ``kv``) in both cases, so a
    checkpoint moves between M = 0 and M > 0 with only the clustering added or dropped.
    The softmax is over the M clusters (or N patches), scaled by head_dim^-0.5.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_clusters: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels {dim} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.num_clusters = num_clusters
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.cluster_norm = nn.LayerNorm(dim, eps=1e-6) if num_clusters > 0 else None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, assignment: Optional[Tensor] = None, valid: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (B, N, C) normalised patch tokens.
            assignment: (B, M, N) cluster assignment Cᵀ (rows sum to 1 over N); required
                when ``num_clusters`` > 0.
            valid: optional bool (B, N), False for padding; only used by plain MHSA, where
                padded patches are masked out of the keys (clusters already exclude them).
        Returns:
            (B, N, C)
        """
        B, N, C = x.shape
        mask = None
        if self.num_clusters > 0:
            if assignment is None:
                raise ValueError("PaCaAttention with clusters needs a cluster assignment")
            tokens = self.cluster_norm(assignment.to(x.dtype) @ x)  # (B, M, C), eq. (2)
        else:
            tokens = x
            if valid is not None:
                mask = valid[:, None, None, :]  # (B, 1, 1, N) broadcast over heads and queries
        head_dim = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(tokens).reshape(B, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

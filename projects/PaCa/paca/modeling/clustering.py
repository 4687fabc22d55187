"""Onsite clustering of PaCa (paper §3.2.1): which of M clusters each of the N patches feeds.

A clustering module maps patch tokens to assignment *logits* (B, M, N); ``soft_assignment``
turns them into the cluster-assignment matrix C (transposed, (B, M, N)) by a softmax over
the N positions, not over the clusters: each cluster is a weighted pooling of the patches,
and clusters stay spatially sparse (paper, end of §3.2.1). The visualiser reads the logits
(§3.3), which is why the softmax is not part of the modules.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn


class ConvClustering(nn.Module):
    """Clustering via convolution, eqs. (4)-(5): DW k×k → GELU → 1×1 → GELU → 1×1 to M.

    The large depth-wise kernel (7×7) lets a patch's assignment depend on its neighbourhood.
    ``to_clusters`` (no bias: a per-cluster constant would cancel in the softmax over N) is
    the only layer whose shape depends on M; it is re-initialised when M changes
    (``paca.checkpoint``).
    """

    def __init__(self, dim: int, num_clusters: int, kernel_size: int = 7):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.to_clusters = nn.Conv2d(dim, num_clusters, 1, bias=False)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """(B, N, C) tokens of an H×W map (N = H·W) → logits (B, M, N)."""
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, *hw)
        x = self.act(self.pw(self.act(self.dw(x))))
        return self.to_clusters(x).flatten(2)


class MlpClustering(nn.Module):
    """Clustering via MLP, eq. (6): Linear C→rC → GELU → Linear rC→M, per patch.

    No spatial operator: the assignment of a token depends on that token only, which makes
    the module usable for any token set (the paper's "token-to-cluster" remark).
    """

    def __init__(self, dim: int, num_clusters: int, hidden_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.to_clusters = nn.Linear(hidden, num_clusters, bias=False)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """(B, N, C) tokens → logits (B, M, N); ``hw`` is unused (kept for one interface)."""
        return self.to_clusters(self.act(self.fc(x))).transpose(1, 2)


def build_clustering(kind: str, dim: int, num_clusters: int) -> nn.Module:
    """``kind`` "conv" (eqs. 4-5) or "mlp" (eq. 6)."""
    if kind == "conv":
        return ConvClustering(dim, num_clusters)
    if kind == "mlp":
        return MlpClustering(dim, num_clusters)
    raise ValueError(f'MODEL.PACA.CLUSTERING must be "conv" or "mlp", got {kind!r}')


def soft_assignment(logits: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Cluster assignment Cᵀ: softmax of ``logits`` (B, M, N) over the N positions.

    Args:
        valid: optional bool (B, N), False for positions in the padding added to batch images
            of different sizes; they get zero weight, so a cluster pools only image content.
    """
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    # A softmax over thousands of positions in fp16 loses the small weights: keep fp32.
    return torch.softmax(logits.float(), dim=-1)

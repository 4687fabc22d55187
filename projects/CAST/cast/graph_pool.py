"""CAST's graph pooling (Alg. 1 of the paper): segment tokens → fewer, coarser region tokens.

1. Farthest point sampling on the token features picks n centroids (not differentiable).
2. The tokens are refined by an attention block, then mean-centred (+ a learnt bias).
3. Every token is softly assigned to the centroids: P = softmax_n(κ·cos(u_i, v_n)).
4. The new tokens are the sampled tokens plus LN(Σ_i P_in·MLP(z_i) / Σ_i P_in): the paper's
   FC after the LN is left out, its role taken by the MLP's output layer (see ``GraphPool``).

The class token takes the same residual update from its own features.
"""
from typing import Optional, Tuple

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import Tensor, nn
from torch.profiler import record_function

__all__ = ["farthest_point_sampling", "key_padding_bias", "GraphPool"]


@torch.no_grad()
def farthest_point_sampling(x: Tensor, n: int, valid: Optional[Tensor] = None) -> Tensor:
    """Indices (B, n) of n tokens of (B, N, C) spread over the feature space.

    Starts from the mean token (not itself a sample): the first pick is the token farthest from
    the mean, each next one the token farthest from all picks so far. Invalid tokens are picked
    only once every valid one is (so an image with fewer than n valid tokens gets them all).
    The loop runs over the n picks; each pick is one batched distance update.
    """
    B, N, _ = x.shape
    if n > N:
        raise ValueError(f"cannot sample {n} of {N} tokens")
    x = x.float()
    if valid is None:
        valid = torch.ones(B, N, dtype=torch.bool, device=x.device)
    weights = valid.float()[..., None]
    mean = (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)
    dist = (x - mean).square().sum(-1)  # (B, N)
    # valid tokens always beat invalid ones; picked tokens never come back (distance -1)
    dist = torch.where(valid, dist, dist.new_full((), -0.5))
    picks = torch.empty(B, n, dtype=torch.long, device=x.device)
    rows = torch.arange(B, device=x.device)
    for i in range(n):
        pick = dist.argmax(dim=1)
        picks[:, i] = pick
        step = (x - x[rows, pick][:, None]).square().sum(-1)
        dist = torch.where(valid, torch.minimum(dist, step), dist)
        dist[rows, pick] = -1.0
    return picks


def key_padding_bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, N) segment validity → additive attention mask (B, 1, 1, 1 + N) over the class token
    (always valid) and the segment tokens: 0 for valid keys, -inf otherwise."""
    valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], 1)
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~valid, float("-inf"))[:, None, None]


class GraphPool(nn.Module):
    """One graph pooling step on tokens (B, 1 + N, C) with the class token first.

    Args:
        dim: token channels.
        num_heads: heads of the refinement attention.
        kappa: scale κ of the cosine similarities in the assignment softmax.
        mlp_ratio: hidden channels of the MLP applied before pooling / dim.
    """

    def __init__(self, dim: int, num_heads: int, kappa: float = 5.0, mlp_ratio: float = 4.0):
        super().__init__()
        self.kappa = kappa
        # refinement of the features the assignment compares: u = MSA(LN(z)) + z
        self.refine_norm = nn.LayerNorm(dim)
        self.refine_attn = Attention(dim, num_heads, qkv_bias=True)
        self.centre_bias = nn.Parameter(torch.zeros(dim))
        # No separate FC after the LN: the MLP's output layer already maps the pooled features
        # linearly (a linear map commutes with the weighted mean). A second FC would put
        # CAST-S at 28.92M parameters against the released 28.34M (28.33M without it).
        self.pre_pool = Mlp(dim, int(dim * mlp_ratio))
        self.norm = nn.LayerNorm(dim)

    def assign(self, tokens: Tensor, valid: Tensor, centroids: Tensor, attn_bias: Tensor) -> Tensor:
        """Soft assignment (B, N, n) of the segment tokens to the sampled ones."""
        u = self.refine_attn(self.refine_norm(tokens), attn_mask=attn_bias) + tokens
        u = u[:, 1:]
        w = valid.to(u.dtype)[..., None]
        # mean-centring: cosines between raw features are all close to 1
        u = u - (u * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1) + self.centre_bias
        u = nn.functional.normalize(u, dim=-1)
        v = torch.gather(u, 1, centroids[..., None].expand(-1, -1, u.shape[-1]))
        logits = self.kappa * u @ v.transpose(1, 2)  # (B, N, n)
        centroid_valid = torch.gather(valid, 1, centroids)
        return logits.masked_fill(~centroid_valid[:, None], float("-inf")).softmax(dim=-1)

    def forward(self, tokens: Tensor, valid: Tensor, n: int,
                attn_bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """tokens (B, 1 + N, C), valid (B, N) →
        pooled tokens (B, 1 + n, C), their validity (B, n), assignment P (B, N, n).
        ``attn_bias``: ``key_padding_bias(valid, tokens.dtype)`` if the caller has it already."""
        with record_function("cast.graph_pool"):  # labels for profilers (tools/profile_cast_step.py)
            segments = tokens[:, 1:]
            with record_function("cast.farthest_point_sampling"):
                centroids = farthest_point_sampling(segments.detach(), n, valid)
            if attn_bias is None:
                attn_bias = key_padding_bias(valid, tokens.dtype)
            P = self.assign(tokens, valid, centroids, attn_bias)
            P = P * valid.to(P.dtype)[..., None]  # empty segments carry nothing
            values = self.pre_pool(tokens)
            pooled = P.transpose(1, 2) @ values[:, 1:] / P.sum(1)[..., None].clamp_min(1e-6)  # (B, n, C)
            sampled = torch.gather(segments, 1, centroids[..., None].expand(-1, -1, segments.shape[-1]))
            new_segments = sampled + self.norm(pooled)
            new_cls = tokens[:, :1] + self.norm(values[:, :1])
            return torch.cat([new_cls, new_segments], dim=1), torch.gather(valid, 1, centroids), P

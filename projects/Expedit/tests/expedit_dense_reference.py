"""Dense references of Expedit's clustering / reconstruction: distances from every token to
*every* centre, masked to the λ × λ cells around the token's initial cell (its adaptive
pooling bin floor(i·h / H)). O(N·M) and loop-free; for small tensors in the tests."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def neighbourhood(tokens_hw: Tuple[int, int], clusters_hw: Tuple[int, int], kernel: int) -> Tensor:
    """Bool (H·W, h·w): centre m is a candidate of token n."""
    (H, W), (h, w) = tokens_hw, clusters_hw
    cy = torch.arange(H) * h // H
    cx = torch.arange(W) * w // W
    dy = (cy[:, None] - torch.arange(h)[None, :]).abs() <= kernel // 2  # (H, h)
    dx = (cx[:, None] - torch.arange(w)[None, :]).abs() <= kernel // 2  # (W, w)
    return (dy[:, None, :, None] & dx[None, :, None, :]).reshape(H * W, h * w)


def dense_clustering(
    x: Tensor,
    clusters_hw: Tuple[int, int],
    kernel: int,
    iterations: int,
    temperature: float,
    topk: int,
    valid: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Centres (B, C, h, w) and reconstruction weights (B, H·W, h·w) of ``x`` (B, C, H, W)."""
    B, C, H, W = x.shape
    h, w = clusters_hw
    x = x.double()
    tokens = torch.ones(B, 1, H, W, dtype=x.dtype) if valid is None else valid.to(x.dtype).expand(B, 1, H, W)
    counts = F.adaptive_avg_pool2d(tokens, clusters_hw)
    centres = (F.adaptive_avg_pool2d(x * tokens, clusters_hw) / counts.clamp(min=1e-12)).flatten(2).transpose(1, 2)
    near = neighbourhood((H, W), clusters_hw, kernel)[None] & (counts.flatten(1) > 0)[:, None, :]
    feats = x.flatten(2).transpose(1, 2)  # (B, N, C)
    alive = tokens.flatten(1)[:, :, None]  # (B, N, 1)

    def neg_sq_distance(c: Tensor) -> Tensor:
        d = torch.cdist(feats, c).square()
        return (-temperature * d).masked_fill(~near, float("-inf"))

    for _ in range(iterations):
        # over clusters; padding tokens far from any valid cluster have none (NaN rows)
        a = torch.softmax(neg_sq_distance(centres), dim=2).nan_to_num(0.0) * alive
        mass = a.sum(1)[:, :, None]  # (B, M, 1)
        centres = torch.where(mass > 0, a.transpose(1, 2) @ feats / mass.clamp(min=1e-12), centres)
    weights = torch.exp(neg_sq_distance(centres))
    weights = (weights / weights.amax(2, keepdim=True)).nan_to_num(0.0)  # the scale cancels in the normalisation
    if topk < weights.shape[2]:
        top, index = weights.topk(topk, dim=2)
        weights = torch.zeros_like(weights).scatter_(2, index, top)
    weights = F.normalize(weights, dim=2) * alive
    return centres.transpose(1, 2).reshape(B, C, h, w), weights


def dense_reconstruction(centres: Tensor, weights: Tensor, tokens_hw: Tuple[int, int]) -> Tensor:
    """(B, C, H, W) = weights (B, N, M) @ centres (B, C, h, w)."""
    B, C = centres.shape[:2]
    out = weights @ centres.double().flatten(2).transpose(1, 2)
    return out.transpose(1, 2).reshape(B, C, *tokens_hw)

"""The previous implementation of the local clustering primitive, kept for before/after numbers.

It views the fine map as (B, C, h, g, w, g) and loops over the K candidate offsets with
broadcast multiply-adds: K passes over the fine map per operation, and autograd saving
what the broadcast products need. Same signatures and results as
``hcformer.layers.local_clustering``; within ``used_by_the_model()`` the model uses it.
"""
import contextlib
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hcformer.layers.local_clustering import _candidate_valid, _check_sizes, _pair, candidate_offsets


def _as_blocks(x: Tensor, coarse_hw, grid) -> Tensor:
    (h, w), (gy, gx) = coarse_hw, grid
    B, C, H, W = x.shape
    if H != h * gy or W != w * gx:
        x = F.pad(x, (0, w * gx - W, 0, h * gy - H))
    return x.reshape(B, C, h, gy, w, gx)


def _from_blocks(x: Tensor, fine_hw) -> Tensor:
    B, C, h, gy, w, gx = x.shape
    return x.reshape(B, C, h * gy, w * gx)[:, :, : fine_hw[0], : fine_hw[1]]


def _shifted(x_padded: Tensor, dy: int, dx: int, r: int, hw) -> Tensor:
    h, w = hw
    return x_padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]


def affinity(fine: Tensor, coarse: Tensor, grid=2, kernel: int = 3, coarse_valid=None) -> Tensor:
    g = _pair(grid)
    (H, W), (h, w) = fine.shape[-2:], coarse.shape[-2:]
    _check_sizes((H, W), (h, w), g)
    r = kernel // 2
    blocks = _as_blocks(fine, (h, w), g)
    coarse_p = F.pad(coarse, (r, r, r, r))
    sims = []
    for dy, dx in candidate_offsets(kernel):
        cand = _shifted(coarse_p, dy, dx, r, (h, w))[:, :, :, None, :, None]
        sims.append((blocks * cand).sum(dim=1))
    logits = torch.stack(sims, dim=1)
    valid = _candidate_valid((h, w), kernel, coarse_valid, fine.device)
    logits = logits.masked_fill(~valid[:, :, :, None, :, None], float("-inf"))
    return _from_blocks(logits, (H, W))


def gather(values: Tensor, weights: Tensor, grid=2, kernel: int = 3) -> Tensor:
    g = _pair(grid)
    (H, W), (h, w) = weights.shape[-2:], values.shape[-2:]
    _check_sizes((H, W), (h, w), g)
    r = kernel // 2
    w_blocks = _as_blocks(weights.to(values.dtype), (h, w), g)
    values_p = F.pad(values, (r, r, r, r))
    out = None
    for k, (dy, dx) in enumerate(candidate_offsets(kernel)):
        cand = _shifted(values_p, dy, dx, r, (h, w))[:, :, :, None, :, None]
        wk = w_blocks[:, k : k + 1]
        out = wk * cand if out is None else out.addcmul_(wk, cand)
    return _from_blocks(out, (H, W))


def scatter(values: Tensor, weights: Tensor, coarse_size: Tuple[int, int], grid=2, kernel: int = 3):
    g = _pair(grid)
    (H, W), (h, w) = values.shape[-2:], tuple(coarse_size)
    _check_sizes((H, W), (h, w), g)
    r = kernel // 2
    dtype = torch.promote_types(values.dtype, weights.dtype)
    v_blocks = _as_blocks(values.to(dtype), (h, w), g)
    w_blocks = _as_blocks(weights.to(dtype), (h, w), g)
    B, C = values.shape[:2]
    sums = v_blocks.new_zeros(B, C, h + 2 * r, w + 2 * r)
    norm = v_blocks.new_zeros(B, 1, h + 2 * r, w + 2 * r)
    for k, (dy, dx) in enumerate(candidate_offsets(kernel)):
        wk = w_blocks[:, k : k + 1]
        sums[:, :, r + dy : r + dy + h, r + dx : r + dx + w] += (v_blocks * wk).sum(dim=(3, 5))
        norm[:, :, r + dy : r + dy + h, r + dx : r + dx + w] += wk.sum(dim=(3, 5))
    return sums[:, :, r : r + h, r : r + w], norm[:, :, r : r + h, r : r + w]


@contextlib.contextmanager
def used_by_the_model() -> Iterator[None]:
    """Within this block, the clustering layers and the hierarchy use this implementation."""
    import hcformer.layers.clustering
    import hcformer.modeling.hierarchy

    saved = hcformer.layers.clustering.affinity, hcformer.modeling.hierarchy.gather
    hcformer.layers.clustering.affinity, hcformer.modeling.hierarchy.gather = affinity, gather
    try:
        yield
    finally:
        hcformer.layers.clustering.affinity, hcformer.modeling.hierarchy.gather = saved

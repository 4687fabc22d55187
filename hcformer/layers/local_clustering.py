"""Local clustering between a fine and a coarse grid: the one primitive of the project.

A fine pixel (i, j) has the parent cell (i // g, j // g) on the coarse grid (g = grid size)
and k×k candidate clusters: the coarse cells at parent + (dy, dx), dy, dx ∈ [-k//2, k//2],
in row-major (dy, dx) order. Everything here works on that K = k·k candidate axis:

- ``affinity``: similarity of each fine pixel with its K candidates (logits, out-of-image
  candidates set to -inf so that a softmax excludes them);
- ``gather``: coarse values → fine values through per-pixel weights (HCFormer's decoding,
  eq. (5) of the paper, SViT's and Expedit's reconstruction);
- ``scatter``: the transpose, fine values → coarse sums (cluster-centre updates).

HCFormer (2×2 windows, 3×3 candidates), SViT super tokens and Expedit token clustering are
this operation with other grid sizes. The implementation views the fine map as
(B, C, h, g, w, g), a reshape rather than a copy, and loops over the K candidate offsets (at
most a handful) with broadcasting, so no K-fold copy of the fine map is ever made.
Sizes that are not multiples of the grid are zero-padded to h·g × w·g and cropped back.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Grid = Union[int, Sequence[int]]

__all__ = ["affinity", "gather", "scatter", "hard_assignment", "candidate_offsets"]


def _pair(grid: Grid) -> Tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    gy, gx = grid
    return int(gy), int(gx)


def candidate_offsets(kernel: int) -> List[Tuple[int, int]]:
    """(dy, dx) offsets of the kernel×kernel candidates, row-major."""
    if kernel % 2 != 1 or kernel < 1:
        raise ValueError(f"kernel must be a positive odd number, got {kernel}")
    r = kernel // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def _check_sizes(fine_hw: Tuple[int, int], coarse_hw: Tuple[int, int], grid: Tuple[int, int]):
    (H, W), (h, w), (gy, gx) = fine_hw, coarse_hw, grid
    if H > h * gy or W > w * gx or H <= (h - 1) * gy or W <= (w - 1) * gx:
        raise ValueError(
            f"fine map {H}x{W} does not match coarse map {h}x{w} with grid {gy}x{gx}: "
            f"expected ceil(fine / grid) == coarse"
        )


def _as_blocks(x: Tensor, coarse_hw: Tuple[int, int], grid: Tuple[int, int]) -> Tensor:
    """(B, C, H, W) → (B, C, h, gy, w, gx), zero-padding the bottom/right when needed."""
    (h, w), (gy, gx) = coarse_hw, grid
    B, C, H, W = x.shape
    if H != h * gy or W != w * gx:
        x = F.pad(x, (0, w * gx - W, 0, h * gy - H))
    return x.reshape(B, C, h, gy, w, gx)


def _from_blocks(x: Tensor, fine_hw: Tuple[int, int]) -> Tensor:
    """(B, C, h, gy, w, gx) → (B, C, H, W), cropping the padding of ``_as_blocks``."""
    B, C, h, gy, w, gx = x.shape
    x = x.reshape(B, C, h * gy, w * gx)
    H, W = fine_hw
    return x[:, :, :H, :W]


def _shifted(x_padded: Tensor, dy: int, dx: int, r: int, hw: Tuple[int, int]) -> Tensor:
    """The coarse map (zero-padded by r) shifted so that cell (i, j) holds (i+dy, j+dx)."""
    h, w = hw
    return x_padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]


def _candidate_valid(
    coarse_hw: Tuple[int, int],
    kernel: int,
    coarse_valid: Optional[Tensor],
    device: torch.device,
) -> Tensor:
    """Bool (B or 1, K, h, w): candidate k of coarse cell (i, j) is inside the image.

    ``coarse_valid`` (B, 1, h, w) marks the cells inside the image (not padding added for
    size divisibility). The centre candidate (the parent) is always kept so that every fine
    pixel has at least one cluster.
    """
    h, w = coarse_hw
    r = kernel // 2
    if coarse_valid is None:
        coarse_valid = torch.ones(1, 1, h, w, dtype=torch.bool, device=device)
    padded = F.pad(coarse_valid.to(torch.bool), (r, r, r, r), value=False)
    masks = [_shifted(padded, dy, dx, r, coarse_hw) for dy, dx in candidate_offsets(kernel)]
    valid = torch.cat(masks, dim=1)
    valid[:, len(masks) // 2] = True
    return valid


def affinity(
    fine: Tensor,
    coarse: Tensor,
    grid: Grid = 2,
    kernel: int = 3,
    coarse_valid: Optional[Tensor] = None,
) -> Tensor:
    """Inner product of every fine pixel with its K = kernel² candidate coarse cells.

    Args:
        fine: (B, C, H, W) embeddings of the fine grid.
        coarse: (B, C, h, w) embeddings of the coarse grid, h = ceil(H / grid).
        grid: size of the fine window under one coarse cell (int or (gy, gx)).
        kernel: candidates per axis (odd).
        coarse_valid: optional bool (B, 1, h, w), False for cells in padding.
    Returns:
        (B, K, H, W) logits; candidates outside the image (or in padding) are -inf.
    """
    g = _pair(grid)
    (H, W), (h, w) = fine.shape[-2:], coarse.shape[-2:]
    _check_sizes((H, W), (h, w), g)
    if fine.shape[:2] != coarse.shape[:2]:
        raise ValueError(f"fine {tuple(fine.shape)} and coarse {tuple(coarse.shape)} differ in B or C")
    r = kernel // 2
    blocks = _as_blocks(fine, (h, w), g)  # (B, C, h, gy, w, gx), a view when no padding
    coarse_p = F.pad(coarse, (r, r, r, r))
    sims = []
    for dy, dx in candidate_offsets(kernel):
        cand = _shifted(coarse_p, dy, dx, r, (h, w))[:, :, :, None, :, None]
        sims.append((blocks * cand).sum(dim=1))  # (B, h, gy, w, gx)
    logits = torch.stack(sims, dim=1)  # (B, K, h, gy, w, gx)
    valid = _candidate_valid((h, w), kernel, coarse_valid, fine.device)
    logits = logits.masked_fill(~valid[:, :, :, None, :, None], float("-inf"))
    return _from_blocks(logits, (H, W))


def gather(values: Tensor, weights: Tensor, grid: Grid = 2, kernel: int = 3) -> Tensor:
    """Coarse → fine: out[:, :, p] = Σ_k weights[:, k, p] · values[:, :, candidate_k(p)].

    Args:
        values: (B, C, h, w) values on the coarse grid.
        weights: (B, K, H, W) per-pixel weights over the K candidates (e.g. a softmax of
            ``affinity``); weights of out-of-image candidates must be 0.
    Returns:
        (B, C, H, W), in the dtype of ``values``.
    """
    g = _pair(grid)
    (H, W), (h, w) = weights.shape[-2:], values.shape[-2:]
    _check_sizes((H, W), (h, w), g)
    r = kernel // 2
    offsets = candidate_offsets(kernel)
    if weights.shape[1] != len(offsets):
        raise ValueError(f"weights have {weights.shape[1]} candidates, kernel {kernel} needs {len(offsets)}")
    w_blocks = _as_blocks(weights.to(values.dtype), (h, w), g)  # (B, K, h, gy, w, gx)
    values_p = F.pad(values, (r, r, r, r))
    out = None
    for k, (dy, dx) in enumerate(offsets):
        cand = _shifted(values_p, dy, dx, r, (h, w))[:, :, :, None, :, None]
        wk = w_blocks[:, k : k + 1]
        # In-place accumulation is autograd-safe: the product's backward needs only its factors.
        out = wk * cand if out is None else out.addcmul_(wk, cand)
    return _from_blocks(out, (H, W))


def scatter(
    values: Tensor,
    weights: Tensor,
    coarse_size: Tuple[int, int],
    grid: Grid = 2,
    kernel: int = 3,
) -> Tuple[Tensor, Tensor]:
    """Fine → coarse, the transpose of ``gather``.

    Args:
        values: (B, C, H, W) values on the fine grid.
        weights: (B, K, H, W) per-pixel weights over the K candidates.
        coarse_size: (h, w) of the coarse grid.
    Returns:
        sums (B, C, h, w): Σ over fine pixels p that have cell c as a candidate of
            weights[p → c] · values[p];
        normaliser (B, 1, h, w): Σ of the same weights (divide for a weighted mean).
    """
    g = _pair(grid)
    (H, W), (h, w) = values.shape[-2:], tuple(coarse_size)
    _check_sizes((H, W), (h, w), g)
    r = kernel // 2
    dtype = torch.promote_types(values.dtype, weights.dtype)
    v_blocks = _as_blocks(values.to(dtype), (h, w), g)  # (B, C, h, gy, w, gx)
    w_blocks = _as_blocks(weights.to(dtype), (h, w), g)  # (B, K, h, gy, w, gx)
    B, C = values.shape[:2]
    sums = v_blocks.new_zeros(B, C, h + 2 * r, w + 2 * r)
    norm = v_blocks.new_zeros(B, 1, h + 2 * r, w + 2 * r)
    for k, (dy, dx) in enumerate(candidate_offsets(kernel)):
        wk = w_blocks[:, k : k + 1]
        # the contribution of the fine pixels of cell (i, j) to its candidate (i+dy, j+dx)
        sums[:, :, r + dy : r + dy + h, r + dx : r + dx + w] += (v_blocks * wk).sum(dim=(3, 5))
        norm[:, :, r + dy : r + dy + h, r + dx : r + dx + w] += wk.sum(dim=(3, 5))
    return sums[:, :, r : r + h, r : r + w], norm[:, :, r : r + h, r : r + w]


def hard_assignment(weights: Tensor, coarse_size: Tuple[int, int], grid: Grid = 2, kernel: int = 3) -> Tensor:
    """Flat index (i * w + j) of the most likely coarse cell of every fine pixel.

    Args:
        weights: (B, K, H, W) weights or logits over the candidates.
        coarse_size: (h, w) of the coarse grid.
    Returns:
        (B, H, W) int64 indices into the flattened coarse grid.
    """
    gy, gx = _pair(grid)
    h, w = coarse_size
    H, W = weights.shape[-2:]
    _check_sizes((H, W), (h, w), (gy, gx))
    offsets = torch.tensor(candidate_offsets(kernel), device=weights.device)
    best = weights.argmax(dim=1)  # (B, H, W)
    rows = torch.arange(H, device=weights.device)[:, None] // gy + offsets[best, 0]
    cols = torch.arange(W, device=weights.device)[None, :] // gx + offsets[best, 1]
    # argmax never picks an excluded candidate; clamping only guards all-equal rows
    return rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)

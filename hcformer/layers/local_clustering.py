"""Local clustering between a fine and a coarse grid: the one primitive of the project.

A fine pixel p = (i, j) has the parent cell (i // g_y, j // g_x) on the coarse grid (g: the
grid size) and K = k·k candidate clusters c_d(p) = parent(p) + d, one per offset
d = (dy, dx) ∈ [-k//2, k//2]², row-major (``candidate_offsets``). Everything here works on
that candidate axis:

    affinity (B, K, H, W):  logits[p, d] = ⟨fine[p], coarse[c_d(p)]⟩
    gather   (B, C, H, W):  out[p]       = Σ_d weights[p, d] · values[c_d(p)]
    scatter  (B, C, h, w):  sums[c]      = Σ_{p, d : c_d(p) = c} weights[p, d] · fine[p]

Candidates outside the coarse grid read zeros; ``affinity`` gives them -inf logits, as it
does cells marked invalid (batch padding), so that a softmax excludes them. ``gather`` is
HCFormer's decoding (eq. (5) of the paper) and SViT's and Expedit's reconstruction;
``scatter``, its transpose, sums fine values into cluster centres. HCFormer (g = 2, k = 3),
SViT super tokens (g = 4, 8) and Expedit token clustering (k = 7) are this operation; no
other file computes a neighbourhood.

Backends
--------
The three products have three implementations, which give the same values and gradients
(tests/test_local_clustering.py compares them); ``set_backend(name)`` or
``with use_backend(name):`` selects one:

- "reference": the definition above, as written below: a loop over the K offsets with
  broadcast multiply-adds, differentiated by autograd;
- "blocked": ``local_clustering_blocked``, one small matrix product per coarse cell, in
  cache-sized blocks; several times faster and lighter than the reference on the CPU
  (benchmarks/RESULTS.md);
- "unfold": ``local_clustering_unfold``, each product as one batched matrix product over
  unfolded maps: a handful of operators per call, for GPUs, where a training step is bound
  by the operators it dispatches;
- "auto" (the default): "blocked" on the CPU, "unfold" on other devices.

"blocked" and "unfold" share their autograd functions (``local_clustering_autograd``): each
gradient is made of the other two products, and only the inputs are saved for backward.
"""
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import local_clustering_blocked as blocked
from . import local_clustering_unfold as unfold
from .backend_switch import BackendSwitch

Grid = Union[int, Sequence[int]]

__all__ = [
    "affinity", "gather", "scatter", "hard_assignment", "candidate_offsets", "pair", "set_backend", "use_backend",
    "resolved_backend",
]


def candidate_offsets(kernel: int) -> List[Tuple[int, int]]:
    """(dy, dx) offsets of the kernel×kernel candidates, row-major."""
    if kernel % 2 != 1 or kernel < 1:
        raise ValueError(f"kernel must be a positive odd number, got {kernel}")
    r = kernel // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


# ---------------------------------------------------------------------------- the definition
def _cells(x: Tensor, coarse_hw: Tuple[int, int], grid: Tuple[int, int]) -> Tensor:
    """(B, C, H, W) → (B, C, h, g_y, w, g_x): the fine pixels of every coarse cell, zeros
    past the fine map (whose sides need not be multiples of g)."""
    (h, w), (gy, gx) = coarse_hw, grid
    if tuple(x.shape[-2:]) != (h * gy, w * gx):
        x = F.pad(x, (0, w * gx - x.shape[-1], 0, h * gy - x.shape[-2]))
    return x.unflatten(3, (w, gx)).unflatten(2, (h, gy))


def _uncells(x: Tensor, fine_hw: Tuple[int, int]) -> Tensor:
    """(B, C, h, g_y, w, g_x) → (B, C, H, W): the inverse of ``_cells``."""
    B, C, h, gy, w, gx = x.shape
    return x.reshape(B, C, h * gy, w * gx)[:, :, : fine_hw[0], : fine_hw[1]]


def _candidates(coarse: Tensor, kernel: int) -> Iterator[Tensor]:
    """For each offset d: coarse[c_d] of every coarse cell, a (B, C, h, w) view (zeros outside)."""
    h, w = coarse.shape[-2:]
    r = kernel // 2
    padded = F.pad(coarse, (r, r, r, r))
    for dy, dx in candidate_offsets(kernel):
        yield padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]


def _shifted_sum(maps: Iterable[Tensor], kernel: int) -> Tensor:
    """Σ_d of the (B, C, h, w) map of offset d moved to cell + d, what moves off the grid
    dropped: the transpose of ``_candidates``."""
    # Each map is placed at its offset in a frame r cells wider on every side, and the frame is
    # cut off at the end: pads of constant widths, so that a traced graph (export) moves the maps
    # right at every input size, also where an offset reaches past a small grid.
    r = kernel // 2
    framed = (F.pad(x, (r + dx, r - dx, r + dy, r - dy)) for (dy, dx), x in zip(candidate_offsets(kernel), maps))
    return F.pad(sum(framed), (-r, -r, -r, -r))


def reference_affinity(fine: Tensor, coarse: Tensor, grid: Tuple[int, int], kernel: int) -> Tensor:
    """fine (B, C, H, W), coarse (B, C, h, w) → unmasked logits (B, K, H, W)."""
    cells = _cells(fine, coarse.shape[-2:], grid)
    logits = [(cells * c[..., None, :, None]).sum(1) for c in _candidates(coarse, kernel)]
    return _uncells(torch.stack(logits, dim=1), fine.shape[-2:])


def reference_gather(values: Tensor, weights: Tensor, grid: Tuple[int, int], kernel: int) -> Tensor:
    """values (B, C, h, w), weights (B, K, H, W) → (B, C, H, W)."""
    a = _cells(weights, values.shape[-2:], grid)
    out = sum(a[:, d : d + 1] * c[..., None, :, None] for d, c in enumerate(_candidates(values, kernel)))
    return _uncells(out, weights.shape[-2:])


def reference_scatter(
    fine: Tensor, weights: Tensor, coarse_hw: Tuple[int, int], grid: Tuple[int, int], kernel: int
) -> Tensor:
    """fine (B, C, H, W), weights (B, K, H, W) → sums (B, C, h, w)."""
    x, a = _cells(fine, coarse_hw, grid), _cells(weights, coarse_hw, grid)
    return _shifted_sum(((a[:, d : d + 1] * x).sum((3, 5)) for d in range(kernel * kernel)), kernel)


# ---------------------------------------------------------------------------- backends
class Backend(NamedTuple):
    """The three products, as the ``reference_*`` functions: inputs checked and of one dtype,
    grid (g_y, g_x), logits unmasked."""

    affinity: Callable[..., Tensor]
    gather: Callable[..., Tensor]
    scatter: Callable[..., Tensor]


BACKENDS: Dict[str, Backend] = {
    "reference": Backend(reference_affinity, reference_gather, reference_scatter),
    "blocked": Backend(blocked.affinity, blocked.gather, blocked.scatter),
    "unfold": Backend(unfold.affinity, unfold.gather, unfold.scatter),
}
_switch = BackendSwitch("local clustering", ["auto", *BACKENDS], default="auto")
# set_backend(name) -> the previous name; ``with use_backend(name):`` for a block
set_backend, use_backend = _switch.set, _switch.use


def resolved_backend(device: torch.device) -> str:
    """The backend the selected one stands for on ``device``."""
    if _switch.selected != "auto":
        return _switch.selected
    return "blocked" if device.type == "cpu" else "unfold"


def _compute(product: str, *args) -> Tensor:
    # In the dtype of the inputs: autocast would otherwise run the fast backends' matrix
    # products in half precision, or the reference's sums in fp32, whatever the caller chose.
    device = args[0].device
    with torch.autocast(device_type=device.type, enabled=False):
        return getattr(BACKENDS[resolved_backend(device)], product)(*args)


# ---------------------------------------------------------------------------- public API
def pair(grid: Grid) -> Tuple[int, int]:
    """A grid (or stride) given as one int or as (y, x) → (int, int)."""
    if isinstance(grid, int):
        return grid, grid
    gy, gx = grid
    return int(gy), int(gx)


def _check_sizes(fine_hw: Tuple[int, int], coarse_hw: Tuple[int, int], grid: Tuple[int, int]):
    (H, W), (h, w), (gy, gx) = fine_hw, coarse_hw, grid
    if H > h * gy or W > w * gx or H <= (h - 1) * gy or W <= (w - 1) * gx:
        raise ValueError(
            f"fine map {H}x{W} does not match coarse map {h}x{w} with grid {gy}x{gx}: "
            f"expected ceil(fine / grid) == coarse"
        )


def _check_kernel(weights: Tensor, kernel: int) -> None:
    if weights.shape[1] != len(candidate_offsets(kernel)):
        raise ValueError(f"weights have {weights.shape[1]} candidates, kernel {kernel} needs {kernel * kernel}")


def _candidate_valid(coarse_valid: Tensor, kernel: int) -> Tensor:
    """Bool (B, K, h, w): candidate d of coarse cell c is a cell inside the image.

    ``coarse_valid`` (B, 1, h, w) marks the cells inside the image (not padding added for
    size divisibility). The centre candidate (the parent) is always kept so that every fine
    pixel has at least one cluster.
    """
    valid = torch.cat(list(_candidates(coarse_valid.to(torch.bool), kernel)), dim=1)
    valid[:, valid.shape[1] // 2] = True
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
        (B, K, H, W) logits in the promoted dtype of the inputs; candidates outside the
        image (or in padding) are -inf.
    """
    g = pair(grid)
    (H, W), (h, w) = fine.shape[-2:], coarse.shape[-2:]
    _check_sizes((H, W), (h, w), g)
    if fine.shape[:2] != coarse.shape[:2]:
        raise ValueError(f"fine {tuple(fine.shape)} and coarse {tuple(coarse.shape)} differ in B or C")
    candidate_offsets(kernel)  # validates the kernel
    dtype = torch.promote_types(fine.dtype, coarse.dtype)
    logits = _compute("affinity", fine.to(dtype), coarse.to(dtype), g, kernel)
    if coarse_valid is None:
        coarse_valid = torch.ones(1, 1, h, w, dtype=torch.bool, device=fine.device)
    valid = _candidate_valid(coarse_valid, kernel)
    valid = valid.repeat_interleave(g[0], dim=2).repeat_interleave(g[1], dim=3)[:, :, :H, :W]
    return logits.masked_fill(~valid, float("-inf"))


def gather(values: Tensor, weights: Tensor, grid: Grid = 2, kernel: int = 3) -> Tensor:
    """Coarse → fine: out[:, :, p] = Σ_d weights[:, d, p] · values[:, :, c_d(p)].

    Args:
        values: (B, C, h, w) values on the coarse grid; finite (out-of-image candidates
            read zeros, and a zero weight times inf would be NaN).
        weights: (B, K, H, W) per-pixel weights over the K candidates (e.g. a softmax of
            ``affinity``).
    Returns:
        (B, C, H, W), in the dtype of ``values`` (with the blocked backend, channels last if
        ``values`` is).
    """
    g = pair(grid)
    _check_sizes(weights.shape[-2:], values.shape[-2:], g)
    _check_kernel(weights, kernel)
    return _compute("gather", values, weights.to(values.dtype), g, kernel)


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
    g = pair(grid)
    coarse_hw = (coarse_size[0], coarse_size[1])  # no int(): a traced size stays a size, not a constant
    _check_sizes(values.shape[-2:], coarse_hw, g)
    _check_kernel(weights, kernel)
    dtype = torch.promote_types(values.dtype, weights.dtype)
    weights = weights.to(dtype)
    sums = _compute("scatter", values.to(dtype), weights, coarse_hw, g, kernel)
    # the scatter of ones, by one reduction of the weights per cell
    per_cell = _cells(weights, coarse_hw, g).sum((3, 5))  # (B, K, h, w)
    return sums, _shifted_sum((per_cell[:, d : d + 1] for d in range(weights.shape[1])), kernel)


def hard_assignment(weights: Tensor, coarse_size: Tuple[int, int], grid: Grid = 2, kernel: int = 3) -> Tensor:
    """Flat index (i * w + j) of the most likely coarse cell of every fine pixel.

    Args:
        weights: (B, K, H, W) weights or logits over the candidates.
        coarse_size: (h, w) of the coarse grid.
    Returns:
        (B, H, W) int64 indices into the flattened coarse grid.
    """
    gy, gx = pair(grid)
    h, w = coarse_size
    H, W = weights.shape[-2:]
    _check_sizes((H, W), (h, w), (gy, gx))
    offsets = torch.tensor(candidate_offsets(kernel), device=weights.device)
    best = weights.argmax(dim=1)  # (B, H, W)
    rows = torch.arange(H, device=weights.device)[:, None] // gy + offsets[best, 0]
    cols = torch.arange(W, device=weights.device)[None, :] // gx + offsets[best, 1]
    # argmax never picks an excluded candidate; clamping only guards all-equal rows
    return rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)

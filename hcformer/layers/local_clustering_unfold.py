"""The "unfold" engine of the local clustering primitive: each product as one batched matrix
product over unfolded maps, as in appendix B of the paper.

With n = h·w coarse cells, the K = k·k candidates of every cell (``F.unfold`` of the coarse map,
kernel k, padding k // 2: zeros outside, candidates row-major in (dy, dx) like
``candidate_offsets``) and the G = g_y·g_x fine pixels under it (``F.unfold`` of a fine map,
kernel and stride g) are

    candidates (B, C, K, n),   fine windows (B, C, G, n),   weight windows (B, K, G, n)

and the products, for every image and cell,

    gather:   out (B, C, G, n)     = Σ_k candidates[:, :, k] · weights[:, k]
    affinity: logits (B, K, G, n)  = Σ_c candidates[:, c] · fine[:, c]
    scatter:  to_candidates (B, C, K, n) = Σ_g weights[:, :, g] · fine[:, :, g]

folded back with ``F.fold``: without overlap onto the fine grid, and for scatter with the
overlap of the candidate windows, which sums every cell's contributions and drops those off
the grid. The unfolded candidates take K times the coarse map, so channels are taken in
groups whose unfolded maps fit ``CHUNK_BYTES``, freed when the product returns (backward
recomputes them, ``local_clustering_autograd``). Each product is then a handful of operators
per group, where the blocked engine loops over blocks and images sized for CPU caches: on a
GPU, where a training step is bound by the operators it dispatches (benchmarks/RESULTS.md),
this is the engine to use; on a CPU the blocked one is several times faster.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .local_clustering_autograd import Geometry, entry_points

__all__ = ["affinity", "gather", "scatter", "unfold_products", "CHUNK_BYTES"]

# The unfolded maps of one group of channels, in bytes. The candidates take K times the coarse
# map (and the einsum copies them once more): decoding all the predictions of full decoding at
# once would otherwise need several times the memory of its result.
CHUNK_BYTES = 64 * 2**20


def unfold_products(
    geometry: Geometry,
    fine: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
    coarse: Optional[Tensor] = None,
    products: Sequence[str] = (),
    fine_format: torch.memory_format = torch.contiguous_format,
) -> Dict[str, Tensor]:
    """The products of the module docstring: the engine of ``local_clustering_autograd``
    (arguments and results as documented there), over as many groups of channels as keep the
    unfolded maps of a group within ``CHUNK_BYTES``."""
    (h, w), grid, kernel = geometry
    fine_hw = (h * grid[0], w * grid[1])
    ref = fine if fine is not None else coarse
    B, C = ref.shape[:2]
    K, G, n = kernel * kernel, grid[0] * grid[1], h * w
    # per channel: its candidates (and the einsum's copy of them), its fine windows and its share of the result
    per_channel = B * n * (2 * K + 2 * G) * ref.element_size()
    step = max(1, CHUNK_BYTES // per_channel)

    def windows(x: Tensor) -> Tensor:  # (B, X, h·gy, w·gx) → (B, X, G, n)
        return F.unfold(x, grid, stride=grid).unflatten(1, (x.shape[1], -1))

    def fold_windows(x: Tensor) -> Tensor:  # (B, X, G, n) → (B, X, h·gy, w·gx)
        return F.fold(x.flatten(1, 2), fine_hw, grid, stride=grid)

    weight_windows = None if weights is None else windows(weights)
    parts = {name: [] for name in ("gather", "scatter") if name in products}
    logits = None
    for c0 in range(0, C, step):
        channels = slice(c0, c0 + step)
        candidates = None if coarse is None else (
            F.unfold(coarse[:, channels], kernel, padding=kernel // 2).unflatten(1, (-1, K)))
        fine_windows = None if fine is None else windows(fine[:, channels])
        if "gather" in products:
            parts["gather"].append(fold_windows(torch.einsum("bckn,bkgn->bcgn", candidates, weight_windows)))
        if "affinity" in products:  # a sum over channels: each group adds its share
            share = torch.einsum("bckn,bcgn->bkgn", candidates, fine_windows)
            logits = share if logits is None else logits.add_(share)
        if "scatter" in products:
            to_candidates = torch.einsum("bkgn,bcgn->bckn", weight_windows, fine_windows)
            parts["scatter"].append(F.fold(to_candidates.flatten(1, 2), (h, w), kernel, padding=kernel // 2))
    out = {}
    if "gather" in products:
        gathered = parts["gather"][0] if len(parts["gather"]) == 1 else torch.cat(parts["gather"], 1)
        out["gather"] = gathered.contiguous(memory_format=fine_format)
    if "affinity" in products:
        out["affinity"] = fold_windows(logits)
    if "scatter" in products:
        out["scatter"] = parts["scatter"][0] if len(parts["scatter"]) == 1 else torch.cat(parts["scatter"], 1)
    return out


affinity, gather, scatter = entry_points(unfold_products)

"""Expedit's token clustering and token reconstruction layers (non-parametric).

Both are local operations between a fine grid of tokens (H × W) and a coarse grid of cluster
centres (h × w), so both run on the project's one local clustering primitive
(``hcformer.layers.local_clustering``); nothing here computes a neighbourhood itself.

Clustering (the SLIC-like local k-means of the paper, eq. (3)):

1. initial centres: adaptive average pooling of the tokens to h × w;
2. κ times: a = softmax over the λ×λ candidate centres of -t·‖x - c‖²  (weights detached),
   centres = a-weighted means of their tokens                       (``scatter``);
3. reconstruction weights: exp(-t·‖x - c‖²) to the same candidates and the *final* centres,
   the top-k per token kept, each token's row L2-normalised.

Reconstruction (after the centres were refined by later blocks): x̂ = Σ_k w_k · c_k
(``gather``).

‖x - c‖² = ‖x‖² - 2⟨x, c⟩ + ‖c‖² is one ``affinity`` call: the fine map [2x, -1] against the
coarse map [c, ‖c‖²] gives 2⟨x, c⟩ - ‖c‖², out-of-image candidates -inf; ‖x‖² is per token.

The grid of the primitive
-------------------------
The primitive defines a token's candidates relative to its parent cell (i // g, j // g) for
an integer grid g. Adaptive pooling from K to k puts token i in the bin
floor(i·k / K) (one of the at most two bins that contain it), so that is the token's
*initial cell*; when k divides K it is i // (K / k) and the primitive is used directly. When
it does not (Swin-L: 12 → 8), the tokens are spread into a zero-padded "slot" map of
g·k cells per axis, g = ceil(K / k): token i goes to slot floor(i·k/K)·g + (its rank in its
bin), so that slot // g is exactly its initial cell. At most g tokens share an initial cell,
so every token has a slot; the empty slots carry zero weights and are dropped again. E.g.
12 → 8: bins hold 2,1,2,1,2,1,2,1 tokens, slots 0 1 | 2 _ | 4 5 | 6 _ | ... (16 slots). The
primitive then computes (g·k)² instead of K² rows: 256 instead of 144 for 12 → 8, which the
FLOP counts of ``clustering_macs`` include.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hcformer.layers.local_clustering import affinity, gather, scatter

__all__ = [
    "SlotLayout",
    "Clustering",
    "token_clustering",
    "token_reconstruction",
    "clustering_macs",
]


def _axis_slots(size: int, clusters: int) -> Tuple[int, Tensor]:
    """Grid g and the slot of each of ``size`` tokens along one axis (see module docstring)."""
    if not 1 <= clusters <= size:
        raise ValueError(f"need 1 <= clusters <= tokens, got {clusters} clusters for {size} tokens")
    grid = math.ceil(size / clusters)
    tokens = torch.arange(size)
    cell = tokens * clusters // size  # the adaptive-pooling bin that starts at or before i
    first = -(-torch.arange(clusters) * size // clusters)  # ceil(j·size / clusters): 1st token of bin j
    return grid, cell * grid + tokens - first[cell]


class SlotLayout:
    """Where the H × W tokens lie on the fine grid the primitive sees for h × w clusters.

    ``grid`` is (gy, gx); the fine grid is (h·gy, w·gx). When both sides divide, the layout
    is the identity and ``to_slots`` / ``from_slots`` return their input.
    """

    def __init__(self, tokens_hw: Tuple[int, int], clusters_hw: Tuple[int, int], device: torch.device):
        (H, W), (h, w) = tokens_hw, clusters_hw
        gy, rows = _axis_slots(H, h)
        gx, cols = _axis_slots(W, w)
        self.tokens_hw, self.clusters_hw, self.grid = (H, W), (h, w), (gy, gx)
        self.slots_hw = (h * gy, w * gx)
        self.identity = self.slots_hw == (H, W)
        self.rows, self.cols = rows.to(device), cols.to(device)

    def to_slots(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, h·gy, w·gx), zeros in the empty slots."""
        if self.identity:
            return x
        out = x.new_zeros(x.shape[:2] + self.slots_hw)
        out[:, :, self.rows[:, None], self.cols[None, :]] = x
        return out

    def from_slots(self, x: Tensor) -> Tensor:
        """(B, C, h·gy, w·gx) → (B, C, H, W)."""
        if self.identity:
            return x
        return x[:, :, self.rows[:, None], self.cols[None, :]]


@dataclass
class Clustering:
    """The output of ``token_clustering``.

    Attributes:
        centres: (B, C, h, w) cluster centres (fp32).
        valid: (B, 1, h, w) bool, False for clusters without any valid token (padding);
            None when every token was valid.
        weights: (B, λ², h·gy, w·gx) reconstruction weights over each slot's candidate
            centres (top-k kept, rows L2-normalised; zero rows for empty / invalid slots).
        layout: the ``SlotLayout`` of tokens and clusters.
        kernel: λ.
    """

    centres: Tensor
    valid: Optional[Tensor]
    weights: Tensor
    layout: SlotLayout
    kernel: int


def _neg_sq_distance(
    x: Tensor, x_sq: Tensor, centres: Tensor, centres_valid: Optional[Tensor], layout: SlotLayout, kernel: int
) -> Tensor:
    """-‖x - c‖² of every slot x to its λ² candidate centres: (B, λ², h·gy, w·gx), -inf for
    candidates outside the map or without tokens. ``x`` (B, C, slots), ``x_sq`` (B, 1, slots)."""
    fine = torch.cat([2 * x, x.new_full((x.shape[0], 1) + x.shape[2:], -1.0)], dim=1)
    coarse = torch.cat([centres, centres.square().sum(1, keepdim=True)], dim=1)
    logits = affinity(fine, coarse, layout.grid, kernel, coarse_valid=centres_valid)
    # distances are ≥ 0; rounding of the expanded form may push near-equal pairs below
    return (logits - x_sq).clamp(max=0.0)


def token_clustering(
    x: Tensor,
    clusters_hw: Tuple[int, int],
    kernel: int = 7,
    iterations: int = 5,
    temperature: float = 0.05,
    topk: int = 10,
    valid: Optional[Tensor] = None,
) -> Clustering:
    """Cluster the tokens of ``x`` into h × w centres by local soft k-means (fp32).

    Args:
        x: (B, C, H, W) tokens; computed in fp32 whatever their dtype and autocast.
        clusters_hw: (h, w), h ≤ H, w ≤ W.
        kernel: λ, candidate centres per axis around a token's initial cell (odd).
        iterations: κ, E/M steps (0 keeps the pooled centres).
        temperature: t of softmax(-t·‖x - c‖²) and of the reconstruction weights.
        topk: reconstruction weights kept per token (of λ²).
        valid: optional bool (B or 1, 1, H, W), False for tokens in padding: they join no
            cluster (and get no reconstruction weights).
    Returns:
        a ``Clustering``; its centres are the clustered tokens (in ``x``'s dtype when the
        caller casts them back).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        layout = SlotLayout(tuple(x.shape[-2:]), tuple(clusters_hw), x.device)
        B = x.shape[0]
        tokens = None if valid is None else valid.to(x.dtype).expand(B, 1, -1, -1)
        # which slots hold a (valid) token: the only ones that may carry weight (None: all)
        mask = tokens
        if not layout.identity:
            mask = layout.to_slots(x.new_ones(B, 1, *x.shape[-2:]) if tokens is None else tokens)

        # initial centres: adaptive average pooling (of the valid tokens only)
        centres_valid = None
        if tokens is None:
            centres = F.adaptive_avg_pool2d(x, clusters_hw)
        else:
            counts = F.adaptive_avg_pool2d(tokens, clusters_hw)
            centres = F.adaptive_avg_pool2d(x * tokens, clusters_hw) / counts.clamp(min=1e-12)
            centres_valid = counts > 0

        xs = layout.to_slots(x)
        xs_sq = xs.square().sum(1, keepdim=True)
        for _ in range(iterations):
            a = torch.softmax(temperature * _neg_sq_distance(xs, xs_sq, centres, centres_valid, layout, kernel), 1)
            a = a.detach() if mask is None else a.detach() * mask
            sums, norm = scatter(xs, a, clusters_hw, layout.grid, kernel)
            # a centre whose tokens all moved away keeps its place (k-means' empty cluster)
            centres = torch.where(norm > 0, sums / norm.clamp(min=1e-12), centres)

        # exp(-t·d²) up to a per-token factor (the row maximum), which the L2 normalisation
        # removes: the same weights, without underflow when all distances are large
        w = torch.softmax(temperature * _neg_sq_distance(xs, xs_sq, centres, centres_valid, layout, kernel), 1)
        if topk < w.shape[1]:
            top, index = w.topk(topk, dim=1)
            w = torch.zeros_like(w).scatter_(1, index, top)
        w = F.normalize(w, dim=1)
        if mask is not None:
            w = w * mask
    return Clustering(centres, centres_valid, w, layout, kernel)


def token_reconstruction(centres: Tensor, clustering: Clustering) -> Tensor:
    """Tokens back from (refined) centres through the clustering's weights.

    Args:
        centres: (B, C, h, w) refined centres (any dtype; computed in fp32).
        clustering: the ``token_clustering`` result that produced them.
    Returns:
        (B, C, H, W) fp32 tokens; zeros where tokens were invalid.
    """
    layout = clustering.layout
    with torch.autocast(device_type=centres.device.type, enabled=False):
        fine = gather(centres.float(), clustering.weights, layout.grid, clustering.kernel)
    return layout.from_slots(fine)


def clustering_macs(
    images: int, channels: int, clusters_hw: Tuple[int, int], grid: Tuple[int, int], kernel: int, iterations: int
) -> int:
    """Multiply-adds of the local products of one ``token_clustering`` + ``token_reconstruction``.

    Per slot (the primitive computes every slot of the (h·gy) × (w·gx) grid) and candidate:
    C + 1 for each distance map (κ + 1 of them), C for each centre update (κ) and C for the
    reconstruction. Element-wise work (softmax, top-k, norms) is not counted, as fvcore
    counts no element-wise op.
    """
    slots = images * clusters_hw[0] * grid[0] * clusters_hw[1] * grid[1]
    per_slot = (iterations + 1) * (channels + 1) + iterations * channels + channels
    return slots * kernel * kernel * per_slot

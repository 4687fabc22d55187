"""CAST's segment hierarchy behind HCFormer's ``Hierarchy`` interface.

    coarsest tokens ──P_T──► ... ──P_1──► superpixel tokens ──label map──► stem-grid cells
        (N_T)                                  (K)                         (h × w, stride 8)

Levels, coarse to fine, as ``decode`` walks them: the T soft assignments of the graph poolings
(each (B, N_fine, N_coarse), rows summing to 1), then the superpixel map (a hard assignment of
every stride-8 cell to its superpixel). ``num_levels`` = T + 1.

``hard_labels(level)`` counts from the fine end, on the stride-8 grid that ``decode`` ends on:
level 0 is the cells, level 1 the superpixels, level 1 + k the segments after k graph poolings
(argmax of P composed up). Every coarse segment is a union of finer ones.
``pixel_labels_at(level)`` gives the same segments with the superpixels' pixel-exact boundaries.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from hcformer_deploy.id_maps import resize_ids
from hcformer.modeling.hierarchy import Hierarchy

from .segment_tokens import labels_at_stride, scatter_sum

__all__ = ["CASTHierarchy"]


class CASTHierarchy(Hierarchy):
    """Args:
        cell_labels: (B, h, w) superpixel id of every stem-grid cell, ids in [0, K).
        assignments: coarse → fine; assignments[i] (B, N_fine, N_coarse) assigns the tokens of
            the next finer level (the K superpixel tokens for the last one) to those of level i.
        pixel_labels: (B, H, W) superpixel ids at input resolution (for ``pixel_labels_at``).
        cell_stride: stride of the stem grid w.r.t. the input.
        coarsest_valid: (B, N_T) bool, False for coarsest tokens that stand for no pixel (an
            image with fewer superpixels than tokens asked for); all valid by default.
    """

    def __init__(self, cell_labels: Tensor, assignments: Sequence[Tensor],
                 pixel_labels: Optional[Tensor] = None, cell_stride: int = 8,
                 coarsest_valid: Optional[Tensor] = None):
        if not assignments:
            raise ValueError("CASTHierarchy needs at least one graph-pooling assignment")
        self.cell_labels = cell_labels
        self.assignments = list(assignments)
        self.pixel_labels = pixel_labels
        self.cell_stride = cell_stride
        if coarsest_valid is None:
            B, _, n = self.assignments[0].shape
            coarsest_valid = torch.ones(B, n, dtype=torch.bool, device=cell_labels.device)
        self.coarsest_valid = coarsest_valid

    @property
    def num_levels(self) -> int:
        return len(self.assignments) + 1

    @property
    def num_superpixels(self) -> int:
        return self.assignments[-1].shape[1]

    def decode(self, x: Tensor, levels: Optional[int] = None) -> Tensor:
        """(B, C, N_T) or (B, C, N_T, 1) coarsest-token values → (B, C, N', 1) after ``levels``
        < num_levels token assignments, or (B, C, h, w) on the stem grid with all levels."""
        levels = self.num_levels if levels is None else levels
        if not 0 <= levels <= self.num_levels:
            raise ValueError(f"levels must be in [0, {self.num_levels}], got {levels}")
        if x.dim() == 4:
            x = x.squeeze(-1)
        for P in self.assignments[:levels]:
            x = torch.einsum("bnk,bck->bcn", P.to(x.dtype), x)
        if levels < self.num_levels:
            return x[..., None]
        B, C = x.shape[:2]
        index = self.cell_labels.flatten(1)[:, None].expand(-1, C, -1)
        return torch.gather(x, 2, index).view(B, C, *self.cell_labels.shape[-2:])

    def pool(self, x: Tensor) -> Tensor:
        """The transpose of ``decode``, normalised: (B, C, h', w') values → (B, C, N_T, 1) soft
        area-weighted means over every coarsest token (e.g. position encodings of the tokens the
        decoder's queries attend to). The grid (h', w') is the decode grid or a coarser one
        (an integer factor: its cells take the superpixel of their centre)."""
        labels = self.cell_labels
        if tuple(x.shape[-2:]) != tuple(labels.shape[-2:]):
            factor = math.ceil(labels.shape[-2] / x.shape[-2])
            labels = labels_at_stride(labels, x.shape[-2:], factor)
        sums, counts = scatter_sum(x, labels, self.num_superpixels)  # over the cells of every superpixel
        counts = counts[..., None]  # (B, K, 1)
        for P in reversed(self.assignments):
            P = P.to(x.dtype)
            sums, counts = P.transpose(1, 2) @ sums, P.transpose(1, 2) @ counts
        return (sums / counts.clamp_min(1e-6)).transpose(1, 2)[..., None]

    def hard_labels(self, level: int, output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """(B, h, w) int64 ids on the stem grid (the grid ``decode`` ends on): level 0 the cells,
        level 1 their superpixels, level 1 + k the segments after k graph poolings (argmax of P
        composed up), so each level is a union of the previous level's segments.
        With ``output_size``, resized (nearest), e.g. to the padded input size."""
        if not 0 <= level <= self.num_levels:
            raise ValueError(f"level must be in [0, {self.num_levels}], got {level}")
        if level == 0:
            B, h, w = self.cell_labels.shape
            labels = torch.arange(h * w, device=self.cell_labels.device).view(1, h, w).expand(B, -1, -1)
        else:
            labels = self._compose(self.cell_labels, level - 1)
        return labels if output_size is None else resize_ids(labels, output_size)

    def pixel_labels_at(self, level: int, output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """Like ``hard_labels(level)`` for level ≥ 1, but from the superpixel map at input
        resolution: segments with the superpixels' own boundaries (for pictures), (B, H, W)."""
        if self.pixel_labels is None:
            raise ValueError("this hierarchy was built without the input-resolution superpixel map")
        if not 1 <= level <= self.num_levels:
            raise ValueError(f"level must be in [1, {self.num_levels}], got {level}")
        labels = self._compose(self.pixel_labels, level - 1)
        return labels if output_size is None else resize_ids(labels, output_size)

    def _compose(self, labels: Tensor, poolings: int) -> Tensor:
        """Superpixel ids → ids of the segments after the ``poolings`` finest graph poolings."""
        for P in reversed(self.assignments[len(self.assignments) - poolings:]):
            parent = P.argmax(dim=-1)  # (B, N_fine) id of the coarse segment
            labels = torch.gather(parent, 1, labels.flatten(1)).view(labels.shape)
        return labels

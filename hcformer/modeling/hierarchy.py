"""Hierarchies of clusterings: what a clustering backbone returns next to its features.

The head, the visualiser and the evaluators only talk to the ``Hierarchy`` interface:

- ``decode(x, levels)``: carry per-cell values (e.g. mask logits) from the coarsest grid to a
  finer one through the assignments (eq. (5) of the paper);
- ``decode_selected(x, batch_index, channel_index)``: the same for a few (image, channel)
  pairs, e.g. the queries matched to a target (what the training losses need);
- ``hard_labels(level)``: the hard clustering (argmax assignment) composed from the finest
  grid up, as an id per pixel, for pictures and undersegmentation error.
"""
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from hcformer_deploy.id_maps import resize_ids
from hcformer.layers.local_clustering import gather, hard_assignment, pair


class Hierarchy(ABC):
    """Interface of a coarse-to-fine hierarchy of soft assignments."""

    @property
    @abstractmethod
    def num_levels(self) -> int:
        """Number of assignments (0 = the coarsest grid only)."""

    @abstractmethod
    def decode(self, x: Tensor, levels: Optional[int] = None) -> Tensor:
        """(B, C, coarsest grid) → (B, C, grid after ``levels`` assignments; all by default)."""

    def decode_selected(self, x: Tensor, batch_index: Tensor, channel_index: Tensor) -> Tensor:
        """(B, C, coarsest grid) → (M, finest grid): the decoded maps of the M pairs
        ``x[batch_index[m], channel_index[m]]`` only.

        Every image's channels are decoded by its own assignments, so the maps are those of
        ``decode(x)[batch_index, channel_index]``, at the cost of decoding M channels instead
        of B·C. The selected maps are packed per image, padded with zero maps up to the
        largest count, and decoded in one call.
        """
        B = x.shape[0]
        slot = torch.empty_like(batch_index)
        for b in range(B):  # the rank of every pair among those of its image
            mine = batch_index == b
            slot[mine] = torch.arange(int(mine.sum()), device=batch_index.device)
        slots = int(slot.max()) + 1 if len(slot) else 0
        packed = x.new_zeros((B, slots) + x.shape[2:])
        packed[batch_index, slot] = x[batch_index, channel_index]
        return self.decode(packed)[batch_index, slot]

    @abstractmethod
    def hard_labels(self, level: int, output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """(B, H', W') int64 cluster ids of level ``level`` for every pixel of the finest grid.

        Level 0 is the finest grid itself (one cluster per cell); level k composes the hard
        assignments of the k finest clusterings. With ``output_size``, the map is resized
        (nearest) to that size, e.g. the padded input size.
        """


class LocalGridHierarchy(Hierarchy):
    """Hierarchy of 3×3-neighbourhood assignments between grids of stride s and g·s.

    The clustering backbones build it with grid g = 2 (one level per stride-2 downsampling);
    a stage's super tokens are one level with the super-token grid (projects/SViT).

    Args:
        assignments: soft assignments ordered coarse → fine; assignments[i] has shape
            (B, 9, H_i, W_i) and maps the grid of assignments[i] onto the grid of
            assignments[i - 1] (or onto the coarsest grid for i = 0).
        coarsest_size: (h, w) of the coarsest grid (stride 32 for ResNet / Swin).
        coarsest_stride: stride of the coarsest grid w.r.t. the input (int or (s_y, s_x)).
        grid: fine cells per coarse cell along each axis, at every level (int or (g_y, g_x)).
    """

    def __init__(
        self,
        assignments: Sequence[Tensor],
        coarsest_size: Tuple[int, int],
        coarsest_stride: Union[int, Tuple[int, int]] = 32,
        grid: Union[int, Tuple[int, int]] = 2,
    ):
        self.assignments = list(assignments)
        self.coarsest_size = tuple(coarsest_size)
        self.coarsest_stride = coarsest_stride
        self.grid = pair(grid)

    @property
    def num_levels(self) -> int:
        return len(self.assignments)

    @property
    def level_strides(self) -> Tuple[Tuple[int, int], ...]:
        """(stride_y, stride_x) of the cells of every level w.r.t. the input, level 0 (the
        finest grid) first: the coarsest stride divided by g once per level below it."""
        (sy, sx), (gy, gx), L = pair(self.coarsest_stride), self.grid, self.num_levels
        return tuple((sy // gy ** (L - k), sx // gx ** (L - k)) for k in range(L + 1))

    def grid_sizes(self) -> List[Tuple[int, int]]:
        """(h, w) of every grid, coarsest first (num_levels + 1 entries)."""
        return [self.coarsest_size] + [tuple(a.shape[-2:]) for a in self.assignments]

    def decode(self, x: Tensor, levels: Optional[int] = None) -> Tensor:
        levels = self.num_levels if levels is None else levels
        if not 0 <= levels <= self.num_levels:
            raise ValueError(f"levels must be in [0, {self.num_levels}], got {levels}")
        for weights in self.assignments[:levels]:
            x = gather(x, weights, grid=self.grid)
        return x

    def hard_labels(self, level: int, output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        if not 0 <= level <= self.num_levels:
            raise ValueError(f"level must be in [0, {self.num_levels}], got {level}")
        sizes = self.grid_sizes()
        finest = sizes[-1]
        B = self.assignments[0].shape[0] if self.assignments else 1
        device = self.assignments[0].device if self.assignments else None
        labels = torch.arange(finest[0] * finest[1], device=device).reshape(1, *finest).expand(B, -1, -1)
        # compose from the finest grid up: labels index the grid of the current level
        for step in range(level):
            i = self.num_levels - 1 - step
            parent = hard_assignment(self.assignments[i], sizes[i], grid=self.grid)  # (B, H_i, W_i) → grid i
            labels = torch.gather(parent.flatten(1), 1, labels.flatten(1)).reshape(labels.shape)
        return labels if output_size is None else resize_ids(labels, output_size)

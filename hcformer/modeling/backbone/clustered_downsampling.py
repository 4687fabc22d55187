"""Clustering at the downsampling layers: what makes a backbone an HCFormer backbone.

A backbone of four stages (strides s, 2s, 4s, 8s; s = 4 for ResNet, SViT and PaCa, the patch
size for Swin) has three stride-2 transitions. Transition k (0, 1, 2) goes from the output
of stage k (the fine map) to the map stage k + 1 starts from (the coarse map, the output of
the downsampling layer). HCFormer clusters the ``level`` coarsest transitions: a
``ClusteringLayer`` softly assigns every fine pixel to the 3×3 coarse cells around its parent
(eq. (3) of the paper), and the assignments, coarsest first, make the backbone's
``LocalGridHierarchy``. Coarse cells that lie entirely in the padding of the batch are never
candidates.
"""
from typing import Dict, Optional, Sequence, Tuple

from torch import Tensor

from hcformer.layers.clustering import ClusteringLayer
from hcformer.modeling.hierarchy import LocalGridHierarchy

from .pyramid import valid_cells

__all__ = ["check_level", "clustered_transitions", "ClusteredDownsampling"]

TRANSITIONS = 3


def check_level(level: int) -> None:
    """Raise ValueError unless MODEL.HC.LEVEL ``level`` is an integer 0..3."""
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= TRANSITIONS:
        raise ValueError(
            f"MODEL.HC.LEVEL={level!r}: expected an integer 0..{TRANSITIONS} (the number of clustered "
            "downsampling layers)"
        )


def clustered_transitions(level: int) -> range:
    """The transitions k that have a clustering layer for MODEL.HC.LEVEL ``level``: the
    ``level`` coarsest, 3 - level .. 2."""
    check_level(level)
    return range(TRANSITIONS - level, TRANSITIONS)


class ClusteredDownsampling:
    """The clusterings of one forward pass of a backbone, and the hierarchy they make.

    Call it at every transition, ``clusterings(k, fine, coarse)``, in any order; transitions
    without a clustering layer are skipped. Then ``hierarchy(coarsest_size)``.

    Args:
        layers: the backbone's ``clustering_layers``, coarsest first: ``layers[i]`` clusters
            transition 2 - i.
        image_sizes: (h, w) of each image before the batch padding, or None (no padding).
        finest_stride: s, the stride of stage 0's output.
    """

    def __init__(
        self,
        layers: Sequence[ClusteringLayer],
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        finest_stride: int = 4,
    ):
        self.layers = list(layers)
        self.image_sizes = image_sizes
        self.finest_stride = finest_stride
        self.assignments: Dict[int, Tensor] = {}

    def __call__(self, k: int, fine: Tensor, coarse: Tensor) -> None:
        """Cluster transition k: fine (B, C_f, H, W) onto coarse (B, C_c, ceil(H/2), ceil(W/2)),
        NCHW (any strides); the assignment is (B, 9, H, W)."""
        index = TRANSITIONS - 1 - k
        if index >= len(self.layers):
            return
        stride = self.finest_stride * 2 ** (k + 1)
        valid = valid_cells(self.image_sizes, stride, coarse.shape[-2:], coarse.device)
        self.assignments[k] = self.layers[index](fine, coarse, valid)

    def hierarchy(self, coarsest_size: Tuple[int, int]) -> LocalGridHierarchy:
        """The hierarchy of the assignments, coarsest first; ``coarsest_size``: (h, w) of the
        coarsest grid (stride 8s)."""
        if len(self.assignments) != len(self.layers):
            raise RuntimeError(f"{len(self.assignments)} of {len(self.layers)} transitions were clustered")
        assignments = [self.assignments[k] for k in sorted(self.assignments, reverse=True)]
        return LocalGridHierarchy(assignments, coarsest_size, coarsest_stride=self.finest_stride * 2**TRANSITIONS)

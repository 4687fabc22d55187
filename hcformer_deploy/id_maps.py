"""Integer id maps (a cluster or segment id per pixel): nearest resizing, exactly; boundaries.

Shared by the eager model (hierarchy, post-processing, pictures) and the runner of
exported models, which resizes the exported cluster maps to the image and draws them.
"""
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["cluster_boundaries", "resize_ids"]


def resize_ids(ids: Tensor, size: Tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of ids (..., H, W) to (..., h, w):

        out[i, j] = ids[floor(i·H / h), floor(j·W / w)]

    the source pixels of ``F.interpolate(mode="nearest")``, found by integer arithmetic and
    read by indexing, so the ids keep their dtype and values. Interpolating would go through
    floating point twice: ids above 2^24 do not survive float32, and the float32 scale it
    multiplies target indices by picks the neighbouring source pixel for some sides of a few
    thousand pixels (e.g. 4977 → 4804; tests/test_id_maps.py). Returns ``ids`` itself when
    the size is unchanged.
    """
    H, W = ids.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return ids
    rows = torch.arange(h, device=ids.device) * H // h
    cols = torch.arange(w, device=ids.device) * W // w
    return ids[..., rows[:, None], cols[None, :]]


def cluster_boundaries(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour is in another cluster (1-pixel lines)."""
    edges = np.zeros(ids.shape, dtype=bool)
    edges[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edges[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edges

"""Where the mask losses look: importance sampling of points (PointRend-style).

The mask losses and the matching cost are not evaluated on every pixel but on a few thousand
points per mask. Points live in normalised image coordinates, [0, 1]² with (x, y) order, so a
prediction and a target of different resolutions are compared at the same places in the image;
they are read with detectron2's PointRend ``point_sample`` (re-exported here). The choice of
points is PointRend's ``get_uncertain_point_coords_with_randomness`` with one addition: the
uniform draws can come from a generator of the caller's, which makes the points of an image
independent of the other images of the batch and of the number of processes
(``SetCriterion.image_generators``); detectron2's draws from the global generator only.
"""

from typing import Callable, Optional

import torch
from detectron2.projects.point_rend.point_features import point_sample
from torch import Tensor

__all__ = ["point_sample", "get_uncertain_point_coords_with_randomness"]


def get_uncertain_point_coords_with_randomness(
    logits: Tensor,
    uncertainty_fn: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Pick points biased towards uncertain regions, plus uniformly random ones.

    ``num_points * oversample_ratio`` candidates are drawn uniformly; the
    ``importance_sample_ratio * num_points`` most uncertain of them are kept and the rest of the
    budget is filled with fresh uniform points, so that confident regions are still supervised.

    Args:
        logits: (N, 1, H, W) class-agnostic mask logits.
        uncertainty_fn: maps (N, 1, P) logits to (N, 1, P) uncertainties (higher = less sure),
            e.g. ``lambda x: -x.abs()``.
        num_points: points to return per mask.
        oversample_ratio: >= 1, candidates drawn per returned point.
        importance_sample_ratio: in [0, 1], fraction of the points chosen by uncertainty.
        generator: where the uniform draws come from (torch's global generator if None); on
            the device of ``logits``.

    Returns:
        (N, num_points, 2) coordinates in [0, 1]², on the device of ``logits``.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    n = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(n, num_candidates, 2, device=logits.device, generator=generator)
    uncertainty = uncertainty_fn(point_sample(logits, candidates, align_corners=False))[:, 0, :]  # (N, num_candidates)
    # the most uncertain candidates as a set: their order only permutes the terms of the losses'
    # sums over points, and an unsorted top-k is twice as fast as a sorted one on the CPU
    top = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices  # (N, num_uncertain)
    coords = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(n, num_random, 2, device=logits.device, generator=generator)], dim=1)
    return coords

"""Superpixel-style scores of a clustering against a ground-truth segmentation.

HCFormer decodes masks by copying each cluster's value to its pixels (§2.3 of the paper), so a
cluster that straddles two ground-truth segments can never be decoded correctly. The paper
measures this "leakage" with the undersegmentation error of superpixel benchmarks. With ground
truth segments G, clusters S and N (non-ignored) pixels:

- undersegmentation error (Neubert & Protzel, 2012, as used by Stutz et al., 2018)::

      UE  = (1/N) Σ_G Σ_{S: S∩G≠∅} min(|S∩G|, |S−G|)

  every cluster that overlaps G is charged the smaller of its part inside G and its part outside
  G: a large cluster with a small leak costs the leak, not the whole cluster.

- achievable segmentation accuracy::

      ASA = (1/N) Σ_S max_G |S∩G|

  the pixel accuracy of the best labelling that is constant on every cluster. For any clustering,
  1 − ASA ≤ UE: each cluster's pixels outside its majority segment are charged at least once.

Ignored pixels (``ignore_label`` in the ground truth) are removed before anything is counted:
they are neither in N nor in |S∩G| nor in |S−G|, so a cluster that covers a segment and some
unlabelled pixels does not leak: a cluster is judged only on the pixels whose segment is known,
and unannotated regions can neither cause nor hide leakage.

All scores come from one joint histogram of (cluster, segment) ids computed with ``np.bincount``
(or ``np.unique`` when the id ranges are too large for a dense table): no Python loop over
clusters or segments. Measured on 1024×2048 maps with 60 ground-truth segments and 5 % ignored
pixels (two CPU cores, numpy 1.23), for ``undersegmentation_counts`` (UE and ASA together) and
``leakage_mask``:

==========================================  ===========  ============
clusters                                    counts       leakage_mask
==========================================  ===========  ============
stride-32 grid (2048 clusters)              ≈ 40 ms      ≈ 45 ms
stride-8 grid (32768 clusters)              ≈ 50 ms      ≈ 45 ms
stride-4 grid (131072 clusters)             ≈ 90 ms      ≈ 100 ms
stride-8 grid, panoptic-style sparse ids    ≈ 75 ms      ≈ 55 ms
==========================================  ===========  ============
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "UndersegmentationCounts",
    "undersegmentation_counts",
    "undersegmentation_error",
    "achievable_segmentation_accuracy",
    "leakage_mask",
]

LabelMap = Union[np.ndarray, torch.Tensor]

# A dense joint table is used while it has at most 2^22 bins (32 MiB of int64) or 4 per pixel:
# up to that size, bincount over it is faster than sorting the pixels with np.unique.
_MAX_DENSE_BINS = 1 << 22
_DENSE_BINS_PER_PIXEL = 4


def _to_numpy(labels: LabelMap, name: str) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"{name} must be an integer label map, got dtype {array.dtype}")
    return array


def _compact_ids(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """Renumber (n,) labels to 0..m-1 (m = number of distinct labels), preserving their order.

    Labels spanning a modest range are shifted and squeezed with a bincount (linear time);
    very sparse ones (e.g. panoptic ids R + 256·G + 256²·B) fall back to ``np.unique`` (a sort).
    """
    if labels.size == 0:
        return labels.astype(np.int64), 0
    low = int(labels.min())
    span = int(labels.max()) - low + 1
    if span > 4 * labels.size + 1024:
        unique, inverse = np.unique(labels, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64, copy=False), len(unique)
    shifted = labels.astype(np.int64) - low
    present = np.bincount(shifted, minlength=span) > 0
    new_id = np.cumsum(present) - 1  # rank of every present label among the present ones
    return new_id[shifted], int(present.sum())


@dataclass
class _Overlaps:
    """The joint histogram of one (ground truth, clustering) pair, as its non-zero entries.

    Clusters and segments are renumbered 0..n_S-1 and 0..n_G-1 over the non-ignored pixels;
    pairs are sorted by cluster, then segment.
    """

    cluster: np.ndarray  # (P,) cluster index of each non-empty intersection S∩G
    segment: np.ndarray  # (P,) segment index of it
    count: np.ndarray  # (P,) |S∩G| > 0
    num_clusters: int
    num_pixels: int  # N: non-ignored pixels
    valid: np.ndarray  # (H, W) bool: pixels that are not ignored
    pixel_cluster: np.ndarray  # (N,) cluster index of each non-ignored pixel (row-major)
    pixel_segment: np.ndarray  # (N,) segment index of each non-ignored pixel

    def cluster_runs(self) -> np.ndarray:
        """(n_S,) index of the first pair of every cluster (pairs are grouped by cluster)."""
        return np.flatnonzero(np.r_[True, self.cluster[1:] != self.cluster[:-1]])


def _overlaps(gt: LabelMap, clusters: LabelMap, ignore_label: Optional[int]) -> _Overlaps:
    gt_np, clusters_np = _to_numpy(gt, "gt"), _to_numpy(clusters, "clusters")
    if gt_np.shape != clusters_np.shape:
        raise ValueError(f"gt and clusters must have the same shape, got {gt_np.shape}, {clusters_np.shape}")
    valid = np.ones(gt_np.shape, dtype=bool) if ignore_label is None else gt_np != ignore_label
    gt_flat, clusters_flat = gt_np[valid], clusters_np[valid]
    segment, num_segments = _compact_ids(gt_flat)
    cluster, num_clusters = _compact_ids(clusters_flat)

    # cluster-major joint id: sorting by it groups the pairs of every cluster
    joint = cluster * num_segments
    joint += segment  # in place: one temporary fewer on multi-megapixel maps
    num_bins = num_clusters * num_segments
    if num_bins <= max(_MAX_DENSE_BINS, _DENSE_BINS_PER_PIXEL * joint.size):
        histogram = np.bincount(joint, minlength=num_bins)
        pair_ids = np.flatnonzero(histogram)
        counts = histogram[pair_ids]
    else:
        pair_ids, counts = np.unique(joint, return_counts=True)
    return _Overlaps(
        cluster=pair_ids // max(num_segments, 1),
        segment=pair_ids % max(num_segments, 1),
        count=counts.astype(np.int64, copy=False),
        num_clusters=num_clusters,
        num_pixels=int(joint.size),
        valid=valid,
        pixel_cluster=cluster,
        pixel_segment=segment,
    )


class UndersegmentationCounts(NamedTuple):
    """Pixel counts behind UE and ASA, to be summed over images for pixel-weighted means.

    ``UE = leaked / num_pixels`` and ``ASA = achievable / num_pixels``.
    """

    leaked: int  # Σ_G Σ_{S∩G≠∅} min(|S∩G|, |S−G|)
    achievable: int  # Σ_S max_G |S∩G|
    num_pixels: int  # N, the non-ignored pixels


def undersegmentation_counts(
    gt: LabelMap, clusters: LabelMap, ignore_label: Optional[int] = 255
) -> UndersegmentationCounts:
    """UE and ASA numerators and their common denominator from one joint histogram.

    Args:
        gt: (H, W) ground-truth segment ids (any integer dtype; numpy or torch).
        clusters: (H, W) cluster ids, same shape.
        ignore_label: gt value of pixels to leave out entirely; None keeps every pixel.
    """
    ov = _overlaps(gt, clusters, ignore_label)
    if ov.num_pixels == 0:
        return UndersegmentationCounts(0, 0, 0)
    runs = ov.cluster_runs()
    cluster_size = np.add.reduceat(ov.count, runs)  # |S| over non-ignored pixels
    outside = cluster_size[ov.cluster] - ov.count  # |S−G| of every pair
    leaked = np.minimum(ov.count, outside).sum()
    achievable = np.maximum.reduceat(ov.count, runs).sum()
    return UndersegmentationCounts(int(leaked), int(achievable), ov.num_pixels)


def undersegmentation_error(gt: LabelMap, clusters: LabelMap, ignore_label: Optional[int] = 255) -> float:
    """UE = (1/N) Σ_G Σ_{S∩G≠∅} min(|S∩G|, |S−G|), in [0, 1]; 0 iff no cluster straddles segments.

    See the module docstring for the treatment of ignored pixels. NaN if every pixel is ignored.
    """
    counts = undersegmentation_counts(gt, clusters, ignore_label)
    return counts.leaked / counts.num_pixels if counts.num_pixels else float("nan")


def achievable_segmentation_accuracy(
    gt: LabelMap, clusters: LabelMap, ignore_label: Optional[int] = 255
) -> float:
    """ASA = (1/N) Σ_S max_G |S∩G|, in (0, 1]; 1 iff every cluster lies inside one segment.

    NaN if every pixel is ignored.
    """
    counts = undersegmentation_counts(gt, clusters, ignore_label)
    return counts.achievable / counts.num_pixels if counts.num_pixels else float("nan")


def leakage_mask(gt: LabelMap, clusters: LabelMap, ignore_label: Optional[int] = 255) -> LabelMap:
    """Pixels outside the majority ground-truth segment of their cluster (the paper's red regions).

    The majority segment of S is argmax_G |S∩G| over non-ignored pixels (ties: the segment with
    the smallest id). The mask has exactly (1 − ASA)·N pixels; ignored pixels are never set.

    Returns:
        (H, W) bool map, a torch tensor on ``gt``'s device if ``gt`` is one, else a numpy array.
    """
    ov = _overlaps(gt, clusters, ignore_label)
    leak = np.zeros(ov.valid.shape, dtype=bool)
    if ov.num_pixels:
        runs = ov.cluster_runs()
        best = np.maximum.reduceat(ov.count, runs)
        # pairs holding their cluster's maximum; the first of each cluster is its majority segment
        # (pairs are sorted by cluster, then by segment id)
        candidates = np.flatnonzero(ov.count == best[ov.cluster])
        first = candidates[np.r_[True, ov.cluster[candidates[1:]] != ov.cluster[candidates[:-1]]]]
        majority = np.empty(ov.num_clusters, dtype=np.int64)
        majority[ov.cluster[first]] = ov.segment[first]
        leak[ov.valid] = ov.pixel_segment != majority[ov.pixel_cluster]
    if isinstance(gt, torch.Tensor):
        return torch.from_numpy(leak).to(gt.device)
    return leak

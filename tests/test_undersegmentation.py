"""Undersegmentation error, achievable segmentation accuracy and leakage on hand-computed maps."""
import numpy as np
import pytest
import torch

from hcformer.evaluation import undersegmentation as useg
from hcformer.evaluation.undersegmentation import (
    achievable_segmentation_accuracy,
    leakage_mask,
    undersegmentation_counts,
    undersegmentation_error,
)

# Two segments side by side; cluster 0 covers segment 0 and the first column of segment 1.
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]
)
STRADDLING = np.array(
    [
        [0, 0, 0, 1],
        [0, 0, 0, 1],
    ]
)


def test_one_cluster_straddling_two_segments():
    # S0 = 4 px of G0 + 2 px of G1, S1 = 2 px of G1, N = 8.
    # UE: G0 charges min(|S0∩G0|=4, |S0−G0|=2) = 2; G1 charges S0 min(2, 4) = 2 and S1 min(2, 0) = 0.
    assert undersegmentation_error(GT, STRADDLING) == pytest.approx(4 / 8)
    # ASA: S0 keeps its 4 px of G0, S1 its 2 px of G1.
    assert achievable_segmentation_accuracy(GT, STRADDLING) == pytest.approx(6 / 8)
    assert undersegmentation_counts(GT, STRADDLING) == (4, 6, 8)
    expected_leak = np.zeros_like(GT, dtype=bool)
    expected_leak[:, 2] = True  # the part of S0 inside G1
    np.testing.assert_array_equal(leakage_mask(GT, STRADDLING), expected_leak)


def test_small_leak_of_a_large_cluster_costs_only_the_leak():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0, 0] = 1
    clusters = np.zeros((4, 4), dtype=np.int64)  # one cluster: 15 px of G0 and 1 px of G1
    # G0: min(15, 1) = 1; G1: min(1, 15) = 1 → UE = 2/16 (the uncorrected UE would charge 16 + 16).
    assert undersegmentation_error(gt, clusters) == pytest.approx(2 / 16)
    assert achievable_segmentation_accuracy(gt, clusters) == pytest.approx(15 / 16)
    assert leakage_mask(gt, clusters).sum() == 1 and leakage_mask(gt, clusters)[0, 0]


def test_perfect_clustering_scores_ue_0_asa_1():
    clusters = np.array([[5, 6, 7, 7], [5, 6, 7, 7]])  # finer than the segments: an oversegmentation
    assert undersegmentation_error(GT, clusters) == 0.0
    assert achievable_segmentation_accuracy(GT, clusters) == 1.0
    assert not leakage_mask(GT, clusters).any()


def test_ignored_pixels_count_nowhere():
    gt = np.array([[0, 0, 255, 1], [0, 0, 255, 1]])
    # S0 covers G0 and the ignored column: without those pixels it lies inside G0
    assert undersegmentation_counts(gt, STRADDLING) == (0, 6, 6)
    assert undersegmentation_error(gt, STRADDLING) == 0.0
    assert not leakage_mask(gt, STRADDLING).any()
    # with nothing ignored, 255 is a segment like any other: the first example again
    assert undersegmentation_counts(gt, STRADDLING, ignore_label=None) == (4, 6, 8)
    # another ignore value
    assert undersegmentation_counts(GT, STRADDLING, ignore_label=1) == (0, 4, 4)
    assert np.isnan(undersegmentation_error(np.full((2, 2), 255), np.zeros((2, 2), dtype=int)))


def test_three_way_split_and_tie_break():
    gt = np.array([[0, 1, 2, 2]])
    clusters = np.zeros((1, 4), dtype=np.int64)
    # G0: min(1, 3) = 1; G1: min(1, 3) = 1; G2: min(2, 2) = 2 → UE = 4/4
    assert undersegmentation_error(gt, clusters) == 1.0
    assert achievable_segmentation_accuracy(gt, clusters) == pytest.approx(2 / 4)
    np.testing.assert_array_equal(leakage_mask(gt, clusters), [[True, True, False, False]])
    # a 1-1 tie goes to the segment with the smaller id
    np.testing.assert_array_equal(leakage_mask(np.array([[3, 2]]), np.array([[0, 0]])), [[True, False]])


def _reference(gt, clusters, ignore):
    """The formulas written as loops over segments and clusters."""
    valid = gt != ignore
    n = valid.sum()
    ue = asa = 0
    for s in np.unique(clusters[valid]):
        in_s = (clusters == s) & valid
        overlaps = [np.sum(in_s & (gt == g)) for g in np.unique(gt[valid])]
        ue += sum(min(o, in_s.sum() - o) for o in overlaps if o > 0)
        asa += max(overlaps)
    return ue / n, asa / n


@pytest.mark.parametrize("seed", range(3))
def test_random_maps_match_the_loops_for_every_dtype_and_id_range(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, size=(12, 10))
    gt[rng.random(gt.shape) < 0.1] = 255
    clusters = rng.integers(0, 9, size=(12, 10))
    ue, asa = _reference(gt, clusters, 255)
    assert undersegmentation_error(gt, clusters) == pytest.approx(ue)
    assert achievable_segmentation_accuracy(gt, clusters) == pytest.approx(asa)
    assert leakage_mask(gt, clusters).sum() == round((1 - asa) * (gt != 255).sum())
    assert 1 - asa <= ue + 1e-12

    # torch maps of other dtypes, sparse panoptic-like ids (np.unique path) and negative ids
    gt_torch = torch.from_numpy(np.where(gt == 255, 255, gt * 65536 + 7)).to(torch.int32)
    clusters_torch = torch.from_numpy(clusters * 1000 - 4000).to(torch.int64)
    assert undersegmentation_error(gt_torch, clusters_torch) == pytest.approx(ue)
    leak = leakage_mask(gt_torch, clusters_torch)
    assert leak.dtype == torch.bool
    np.testing.assert_array_equal(leak.numpy(), leakage_mask(gt, clusters))

    # the sparse joint histogram gives the dense one's answer
    monkeypatch.setattr(useg, "_MAX_DENSE_BINS", 0)
    monkeypatch.setattr(useg, "_DENSE_BINS_PER_PIXEL", 0)
    assert undersegmentation_error(gt.astype(np.uint8), clusters.astype(np.int16)) == pytest.approx(ue)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        undersegmentation_error(GT, STRADDLING[:, :3])
    with pytest.raises(TypeError, match="integer"):
        undersegmentation_error(GT.astype(np.float32), STRADDLING)

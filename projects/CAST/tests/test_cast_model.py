"""Segment tokens, farthest point sampling, graph pooling and the CAST-S / CAST-B sizes."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cast.graph_pool import GraphPool, farthest_point_sampling
from cast.model import CAST, cast_classifier
from cast.segment_tokens import labels_at_stride, scatter_mean


def test_scatter_mean_against_a_loop_and_empty_segments():
    torch.manual_seed(0)
    values = torch.randn(2, 5, 4, 6)
    labels = torch.randint(0, 6, (2, 4, 6))
    labels[labels == 3] = 2  # segment 3 has no cell
    means, counts = scatter_mean(values, labels, 7)
    for b in range(2):
        for k in range(7):
            cells = labels[b] == k
            assert counts[b, k] == cells.sum()
            expected = values[b][:, cells].mean(1) if cells.any() else torch.zeros(5)
            assert torch.allclose(means[b, k], expected, atol=1e-6)


def test_labels_at_stride_samples_cell_centres():
    labels = torch.arange(16 * 24).view(1, 16, 24)
    cells = labels_at_stride(labels, (2, 3), 8)
    assert cells.tolist() == [[[4 * 24 + 4, 4 * 24 + 12, 4 * 24 + 20], [12 * 24 + 4, 12 * 24 + 12, 12 * 24 + 20]]]


def _fps_reference(x: torch.Tensor, n: int) -> list:
    dist = (x - x.mean(0)).square().sum(-1)
    picks = []
    for _ in range(n):
        i = int(dist.argmax())
        picks.append(i)
        dist = torch.minimum(dist, (x - x[i]).square().sum(-1))
        dist[picks] = -1
    return picks


def test_farthest_point_sampling_matches_a_reference_and_skips_invalid():
    torch.manual_seed(0)
    x = torch.randn(3, 20, 4)
    picks = farthest_point_sampling(x, 6)
    for b in range(3):
        assert picks[b].tolist() == _fps_reference(x[b], 6)
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[:, 15:] = False
    valid[2, 3:] = False  # 3 valid tokens for 6 picks: the valid ones come first
    picks = farthest_point_sampling(x, 6, valid)
    assert (picks[:2] < 15).all()
    assert sorted(picks[2, :3].tolist()) == [0, 1, 2]
    assert all(len(set(p.tolist())) == 6 for p in picks)


def test_graph_pool_assignments():
    torch.manual_seed(0)
    pool = GraphPool(dim=16, num_heads=2, kappa=5.0)
    tokens = torch.randn(2, 1 + 12, 16, requires_grad=True)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 9:] = False
    out, out_valid, P = pool(tokens, valid, 4)
    assert out.shape == (2, 5, 16) and out_valid.all() and P.shape == (2, 12, 4)
    assert torch.allclose(P[valid].sum(-1), torch.ones(int(valid.sum())))
    assert (P[~valid] == 0).all()  # empty segments carry nothing
    out.sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all()


def test_kappa_sharpens_the_assignment():
    torch.manual_seed(0)
    pool = GraphPool(dim=16, num_heads=2, kappa=1.0)
    tokens, valid = torch.randn(1, 13, 16), torch.ones(1, 12, dtype=torch.bool)
    soft = pool(tokens, valid, 4)[2].max(-1).values.mean()
    pool.kappa = 20.0
    sharp = pool(tokens, valid, 4)[2].max(-1).values.mean()
    assert sharp > soft


@pytest.mark.parametrize("variant, expected", [("small", 28.34e6)])
def test_classifier_size_matches_the_released_model(variant, expected):
    model = cast_classifier(variant)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - expected) / expected < 0.01, params


def test_tiny_cast_forward_on_odd_sizes():
    torch.manual_seed(0)
    model = CAST(dim=32, num_heads=2, depths=(1, 1), num_tokens=(8, 4), superpixel_size=8, pos_base_size=64)
    out = model(torch.randn(2, 3, 40, 56))
    K = out.hierarchy.num_superpixels
    assert out.tokens[0].shape == (2, 1 + K, 32)
    assert out.pooled.shape == (2, 1 + 4, 32)
    assert [tuple(P.shape) for P in out.hierarchy.assignments] == [(2, 8, 4), (2, K, 8)]


def test_profile_tool_reads_the_stage_labels_of_a_training_step():
    # the stages are labelled in the model (record_function); a renamed label would print 0 ms
    tool = Path(__file__).resolve().parents[1] / "tools" / "profile_cast_step.py"
    config = Path(__file__).resolve().parents[1] / "configs" / "shapes" / "hcformer_cast_tiny_shapes.yaml"
    run = subprocess.run([sys.executable, str(tool), "--config-file", str(config), "--size", "64", "--batch", "1",
                          "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stages = dict(re.findall(r"^  (\S.*?) +([\d.]+) ms/step", run.stdout, re.MULTILINE))
    assert set(stages) == {"superpixels", "fps", "graph pooling (incl. fps)"}, run.stdout
    assert all(float(ms) > 0 for ms in stages.values()), run.stdout
    assert float(stages["graph pooling (incl. fps)"]) >= float(stages["fps"])

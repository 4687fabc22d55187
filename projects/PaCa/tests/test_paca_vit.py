"""PaCa-ViT: sizes (parameters, FLOPs) of the released variants, the attention against a dense
reference, plain MHSA for M = 0, stage-wise vs block-wise clustering, clustering via MLP, the
teacher."""
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from fvcore.nn import parameter_count
from torch import nn

from paca.modeling import (
    PACA_VARIANTS,
    ConvClustering,
    MlpClustering,
    PaCaAttention,
    PaCaStage,
    PaCaViT,
    paca_classifier,
    soft_assignment,
)
from paca.modeling.teacher import ClusteringTeacher

PROJECT = Path(__file__).resolve().parents[1]

# The released models' parameter counts (reference facts): (variant, overrides, params in M)
RELEASED = {
    "tiny": ("tiny", {}, 12.20),
    "small": ("small", {}, 22.04),
    "base": ("base", {}, 46.91),
    "small-mlp": ("small", dict(clustering="mlp"), 22.64),
    "small-blockwise-M100x4": ("small", dict(clustering_scope="block", num_clusters=(100,) * 4), 24.19),
    # the teacher's layers are this project's design (the paper shows its structure only)
    "small-teacher": ("small", dict(depths=(3, 3, 7, 3), num_clusters=(100,) * 4, teacher_depths=(2, 2, 2, 2)), 21.08),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_classifier_parameters_match_the_released_models(name):
    variant, overrides, released = RELEASED[name]
    params = parameter_count(paca_classifier(variant, **overrides))[""] / 1e6
    assert abs(params / released - 1) < 0.01, f"{name}: {params:.3f}M vs {released}M"


def _analyze_paca():
    spec = importlib.util.spec_from_file_location("analyze_paca", PROJECT / "tools" / "analyze_paca.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


ANALYZE_PACA = _analyze_paca()


@pytest.mark.parametrize(
    "name", list(ANALYZE_PACA.CLASSIFIERS), ids=lambda name: re.sub(r"\W+", "-", name).strip("-").lower()
)
def test_classifier_flops_match_the_released_models(name):
    """What ``analyze_paca.py --classifiers`` prints, at 224×224: the onsite variants within 1 %
    of the released FLOPs; the teacher's layers are this project's design (2.4 % under)."""
    variant, overrides, _, released = ANALYZE_PACA.CLASSIFIERS[name]
    _, flops = ANALYZE_PACA.classifier_counts(variant, overrides)
    tolerance = 0.03 if "teacher" in name else 0.01
    assert abs(flops / released - 1) < tolerance, f"{name}: {flops:.3f}G vs {released}G"


@pytest.mark.parametrize("name", list(RELEASED))
def test_every_variant_runs_on_odd_sizes(name):
    variant, overrides, _ = RELEASED[name]
    torch.manual_seed(0)
    model = PaCaViT(**{**PACA_VARIANTS[variant], **overrides}).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 70, 45))
    # stride-2 convs with padding 1 give ceil(size / 2) at every step
    expected = [(2, c, h, w) for c, h, w in zip(model.dims, (18, 9, 5, 3), (12, 6, 3, 2))]
    assert [tuple(o.shape) for o in outs] == expected
    classifier = paca_classifier(variant, num_classes=7, **overrides).eval()
    with torch.no_grad():
        assert classifier(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def _reference_attention(attn: PaCaAttention, x, assignment=None):
    """Eqs. (1)-(2) written out per head, with explicit softmax."""
    B, N, C = x.shape
    h = attn.num_heads
    d = C // h
    tokens = x if assignment is None else attn.cluster_norm(torch.einsum("bmn,bnc->bmc", assignment, x))
    q = attn.q(x)
    k, v = attn.kv(tokens).split(C, dim=-1)
    heads = []
    for i in range(h):
        s = slice(i * d, (i + 1) * d)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / d**0.5, dim=-1)  # over keys
        heads.append(weights @ v[..., s])
    return attn.proj(torch.cat(heads, dim=-1))


def test_patch_to_cluster_attention_matches_dense_reference():
    torch.manual_seed(0)
    attn = PaCaAttention(dim=16, num_heads=2, num_clusters=5).eval()
    x = torch.randn(2, 12, 16)
    assignment = soft_assignment(torch.randn(2, 5, 12))
    torch.testing.assert_close(attn(x, assignment), _reference_attention(attn, x, assignment))


def test_zero_clusters_is_plain_mhsa():
    torch.manual_seed(0)
    attn = PaCaAttention(dim=16, num_heads=4, num_clusters=0).eval()
    assert attn.cluster_norm is None
    x = torch.randn(2, 10, 16)
    out = attn(x)
    assert out.shape == x.shape
    # the same weights in torch's own multi-head attention
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.kv.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.kv.bias]))
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0])
    # padded patches are not keys: the valid ones alone give the same result
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False
    masked = attn(x, valid=valid)
    torch.testing.assert_close(masked[1, :7], attn(x[1:, :7])[0])


def test_zero_clusters_stage_has_no_clustering():
    model = PaCaViT(num_clusters=(4, 4, 4, 0), depths=(1, 1, 1, 2))
    assert not any(isinstance(m, (ConvClustering, MlpClustering)) for m in model.stages[3].modules())
    assert all(b.attn.num_clusters == 0 for b in model.stages[3].blocks)


def test_soft_assignment_is_a_softmax_over_valid_positions():
    logits = torch.randn(2, 3, 8)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[0, 5:] = False
    a = soft_assignment(logits, valid)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3))
    assert (a[0, :, 5:] == 0).all()
    torch.testing.assert_close(a[0, :, :5], logits[0, :, :5].softmax(-1))


def _count_clustering_calls(stage: PaCaStage):
    calls = []
    for m in stage.modules():
        if isinstance(m, (ConvClustering, MlpClustering)):
            m.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("scope, modules", [("stage", 1), ("block", 3)])
def test_stage_wise_shares_one_assignment_block_wise_does_not(scope, modules):
    torch.manual_seed(0)
    model = PaCaViT(dims=(16, 16, 16, 16), depths=(3, 1, 1, 1), num_heads=(2,) * 4, num_clusters=(6, 6, 6, 0),
                    clustering_scope=scope, drop_path_rate=0.0).eval()
    stage = model.stages[0]
    assert sum(isinstance(m, ConvClustering) for m in stage.modules()) == modules
    assert (stage.blocks[0].clustering is not None) and all(
        (b.clustering is not None) == (scope == "block") for b in stage.blocks[1:]
    )
    seen = []
    for block in stage.blocks:
        block.attn.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    calls = _count_clustering_calls(stage)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == modules
    same = [torch.equal(seen[0], a) for a in seen[1:]]
    assert all(same) if scope == "stage" else not any(same)


def test_clustering_via_mlp():
    torch.manual_seed(0)
    model = PaCaViT(dims=(16, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(2,) * 4, clustering="mlp").eval()
    clusterers = [b.clustering for s in model.stages for b in s.blocks if b.clustering is not None]
    assert len(clusterers) == 3 and all(isinstance(c, MlpClustering) for c in clusterers)
    logits = clusterers[0](torch.randn(2, 20, 16), (4, 5))
    assert logits.shape == (2, 100, 20)
    with pytest.raises(ValueError, match="conv"):
        PaCaViT(clustering="kmeans")


def test_teacher_gives_every_stage_its_clusters():
    torch.manual_seed(0)
    model = PaCaViT(dims=(16, 32, 32, 48), depths=(1, 2, 1, 1), num_heads=(2,) * 4, num_clusters=(8, 8, 8, 8),
                    teacher_depths=(1, 1, 1, 1)).eval()
    assert isinstance(model.teacher, ClusteringTeacher)
    assert not any(isinstance(m, (ConvClustering, MlpClustering)) for m in model.stages.modules())
    with torch.no_grad():
        stem = model.stem(torch.randn(2, 3, 64, 48))
        features, logits = model.teacher(stem)
        outs = model(torch.randn(2, 3, 64, 48))
    assert [tuple(f.shape) for f in features] == [(2, 16, 16, 12), (2, 32, 8, 6), (2, 32, 4, 3), (2, 48, 2, 2)]
    assert [tuple(lg.shape) for lg in logits] == [(2, 8, 16, 12), (2, 8, 8, 6), (2, 8, 4, 3), (2, 8, 2, 2)]
    assert [tuple(o.shape) for o in outs] == [tuple(f.shape) for f in features]

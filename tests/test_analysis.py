"""fvcore op handles of hcformer.engine.analysis (checked against dense equivalents) and the
analyze_model tool."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

from hcformer.engine.analysis import activation_count_analysis, flop_count_analysis


class _DeformConv(nn.Module):
    """A modulated deformable conv with the weight shape of ``conv``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x, offset, mask):
        c = self.conv
        return deform_conv2d(x, offset, c.weight, c.bias, c.stride, c.padding, c.dilation, mask)


@pytest.mark.parametrize("groups,stride", [(1, 1), (1, 2), (2, 2)])
def test_deform_conv2d_counts_like_dense_conv(groups: int, stride: int):
    conv = nn.Conv2d(8, 6, 3, stride=stride, padding=1, groups=groups)
    x = torch.rand(2, 8, 10, 12)
    out_h, out_w = conv(x).shape[-2:]
    offset = torch.rand(2, 2 * 9, out_h, out_w)
    mask = torch.rand(2, 9, out_h, out_w)
    deform = _DeformConv(conv)
    assert deform(x, offset, mask).shape == conv(x).shape

    dense_flops = flop_count_analysis(conv, (x,))
    deform_flops = flop_count_analysis(deform, (x, offset, mask))
    assert deform_flops.total() == dense_flops.total()
    assert deform_flops.unsupported_ops() == {}
    expected = 2 * 6 * out_h * out_w * (8 // groups) * 3 * 3  # N·C_out·H·W · C_in/g·kh·kw
    assert deform_flops.total() == expected
    assert (
        activation_count_analysis(deform, (x, offset, mask)).total()
        == activation_count_analysis(conv, (x,)).total()
    )


class _Product(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_baddbmm_counts_like_bmm():
    a, b, c = torch.rand(3, 4, 6), torch.rand(3, 4, 5), torch.rand(3, 5, 6)
    fused = flop_count_analysis(_Product(torch.baddbmm), (a, b, c))
    plain = flop_count_analysis(_Product(torch.bmm), (b, c))
    assert fused.total() == plain.total() == 3 * 4 * 5 * 6
    assert fused.unsupported_ops() == {}


def test_average_pooling_counts_as_fvcore_counts_its_adaptive_form():
    """SViT pools grid cells with avg_pool2d (it exports); its FLOPs stay those of the
    adaptive pooling it replaced: one per input element."""
    x = torch.rand(2, 8, 16, 24)
    pooled = flop_count_analysis(_Product(lambda x: torch.nn.functional.avg_pool2d(x, (4, 8), (4, 8))), (x,))
    adaptive = flop_count_analysis(_Product(lambda x: torch.nn.functional.adaptive_avg_pool2d(x, (4, 3))), (x,))
    assert pooled.total() == adaptive.total() == x.numel()
    assert pooled.unsupported_ops() == {}


def test_scaled_dot_product_attention_counts_both_products():
    q, k, v = torch.rand(2, 4, 5, 8), torch.rand(2, 4, 7, 8), torch.rand(2, 4, 7, 6)
    fused = flop_count_analysis(_Product(nn.functional.scaled_dot_product_attention), (q, k, v))
    explicit = flop_count_analysis(
        _Product(lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-1) @ v), (q, k, v)
    )
    assert fused.total() == explicit.total() == 2 * 4 * 5 * 7 * (8 + 6)


class _Attention(nn.Module):
    def __init__(self, need_weights: bool, masked: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4)
        self.need_weights = need_weights
        self.masked = masked

    def forward(self, query, memory):
        mask = torch.zeros(2 * 4, len(query), len(memory), dtype=torch.bool)
        mask = mask if self.masked else None
        return self.attn(query, memory, memory, attn_mask=mask, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_multihead_attention_is_fully_counted(need_weights: bool, masked: bool):
    # PyTorch picks bmm, baddbmm or the fused kernel depending on these flags; the count must
    # not depend on which one it is.
    query, memory = torch.rand(5, 2, 32), torch.rand(7, 2, 32)
    flops = flop_count_analysis(_Attention(need_weights, masked).eval(), (query, memory))
    projections = 2 * (5 * 32 * 32 + 2 * 7 * 32 * 32 + 5 * 32 * 32)  # q, k, v, out; batch 2
    products = 2 * 4 * 5 * 7 * (8 + 8)  # q·kᵀ and attn·v; batch 2, 4 heads of 8 channels
    assert flops.total() == projections + products


ROOT = Path(__file__).resolve().parents[1]


def analyze_model_json(config: str, *args: str) -> dict:
    """The JSON that tools/analyze_model.py prints for ``config`` (relative to the repository)."""
    command = [sys.executable, str(ROOT / "tools/analyze_model.py"), "--config-file", str(ROOT / config), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # stdout holds nothing but the JSON object


@pytest.mark.slow
def test_analyze_model_tool_json():
    results = analyze_model_json("configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml",
                                 "--tasks", "flop", "parameter", "activation", "--input-size", "64x96")
    parameters = results["parameters"]
    assert parameters["total"] == sum(n for name, n in parameters.items() if name != "total")
    for key in ("flops", "activations"):
        counts = results[key]["mean"]
        assert results[key]["num_inputs"] == 1
        assert counts["backbone"] > 0 and counts["sem_seg_head"] > 0
        assert counts["backbone"] + counts["sem_seg_head"] <= counts["total"]
        assert counts["other"] >= 0


@pytest.mark.slow
def test_analyze_model_opens_a_projects_config():
    """A config under projects/<P>/ gets its project imported, as in every other tool (its
    MODEL.SVIT keys and D2HCSViT backbone exist only then)."""
    results = analyze_model_json("projects/SViT/configs/ade20k/semantic-segmentation/hcformer_svit_small_bs16_160k.yaml",
                                 "--tasks", "parameter")
    assert results["parameters"]["backbone"] > 20_000_000  # SViT-S


@pytest.mark.slow
def test_analyze_model_counts_hc_cast_superpixels_included():
    """fvcore traces the model: CAST's superpixel count, a Python number of the image size,
    must not be computed from a traced size (round() of one failed)."""
    results = analyze_model_json("projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml",
                                 "--tasks", "flop", "--input-size", "64x64")
    flops = results["flops"]["mean"]
    assert flops["backbone"] > 0 and flops["sem_seg_head"] > 0


def test_local_clustering_is_counted_as_multiply_adds():
    from hcformer.layers.local_clustering import affinity, gather, scatter

    class Clustering(torch.nn.Module):
        def forward(self, fine, coarse, weights):
            return affinity(fine, coarse), gather(coarse, weights), scatter(fine, weights, (4, 5))[0]

    B, C, H, W, K = 2, 3, 8, 10, 9
    fine, coarse, weights = torch.randn(B, C, H, W), torch.randn(B, C, 4, 5), torch.rand(B, K, H, W)
    flops = flop_count_analysis(Clustering(), (fine, coarse, weights))
    assert flops.total() == 3 * B * C * H * W * K
    assert not any("PythonOp" in op for op in flops.unsupported_ops())

#!/usr/bin/env python
"""Backbone FLOPs (and optionally CPU latency) of a config's HC-Swin with and without Expedit.

FLOPs are fvcore's (one multiply-add = one FLOP, ``hcformer.engine.analysis``'s op handles),
counted on the backbone alone (``HCSwin``; with HCFormer+, the res5 encoder ``aux`` is part of
it and reported on its own line). The model is randomly initialised: counts do not depend on
the weights. fvcore does not see inside the local clustering primitive (autograd functions,
traced as opaque nodes), so the clustering / reconstruction products are counted analytically
(``expedit.clustering_macs``: (κ+1) distance maps of C+1 channels, κ centre updates and one
reconstruction of C channels, per slot and candidate) and added on their own line; the rest of
the clustering is element-wise (softmax, top-k, norms), which fvcore counts nowhere.

Tracing: at the time of writing, ``torch.jit`` tracing of the primitive's autograd functions
fails ("RuntimeError: unordered_map::at", tools/analyze_model.py included), so the counting
pass swaps ``affinity`` / ``scatter`` / ``gather`` for shape-only stand-ins (zeros of the
right shapes; FLOPs depend on shapes only) and counts their products analytically: Expedit's
as above, HCFormer's clustering layers as 9·EMB_DIM per fine pixel (their affinity), the same
with and without Expedit. Latency (``--latency-runs``) runs the real primitive.

    # the paper's measurement: Swin-L at 1024², COCO panoptic setting (α 10, λ 7, κ 5, k 8)
    python projects/Expedit/tools/analyze_expedit.py --input-size 1024x1024 --config-file \\
        projects/Expedit/configs/coco/panoptic-segmentation/hcformer+_swin_large_IN21k_384_bs16_200ep_expedit.yaml
    # any MODEL.EXPEDIT.* override, e.g. an α sweep
    python projects/Expedit/tools/analyze_expedit.py --config-file <cfg> MODEL.EXPEDIT.ALPHA 8
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from unittest import mock

from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the expedit package

import hcformer.layers.clustering  # noqa: E402
from expedit import ExpeditSwinStage, add_expedit_config  # noqa: E402
from expedit.config import apply_expedit  # noqa: E402
from hcformer.config import add_hcformer_config  # noqa: E402
from hcformer.engine.analysis import flop_count_analysis  # noqa: E402


class Features(nn.Module):
    """The backbone as a function of the image returning only tensors (for tracing)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        out = self.backbone(image)
        return tuple(out[k] for k in ("res2", "res3", "res4", "res5") if k in out)


def _affinity_shape(fine: Tensor, coarse: Tensor, grid=2, kernel: int = 3, coarse_valid=None) -> Tensor:
    return fine.new_zeros(fine.shape[0], kernel * kernel, *fine.shape[-2:])


def _gather_shape(values: Tensor, weights: Tensor, grid=2, kernel: int = 3) -> Tensor:
    return values.new_zeros(values.shape[:2] + weights.shape[-2:])


def _scatter_shape(values: Tensor, weights: Tensor, coarse_size, grid=2, kernel: int = 3):
    return values.new_zeros(values.shape[:2] + tuple(coarse_size)), values.new_ones(values.shape[0], 1, *coarse_size)


def hc_clustering_macs(backbone: nn.Module, image: Tensor) -> int:
    """9 · EMB_DIM per fine pixel of each HCFormer clustering layer (its affinity)."""
    total = 0

    def hook(module, args, output) -> None:
        nonlocal total
        B, _, H, W = args[0].shape
        total += 9 * B * H * W * module.fine_emb.out_channels

    layers = [m for m in backbone.modules() if isinstance(m, hcformer.layers.clustering.ClusteringLayer)]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        backbone(image)
    for handle in handles:
        handle.remove()
    return total


def count(backbone: nn.Module, image: Tensor) -> Dict[str, float]:
    """GFLOPs of the backbone: total, Swin (without ``aux``), ``aux``, analytic clustering."""
    hc = hc_clustering_macs(backbone, image)
    tc = sys.modules["expedit.token_clustering"]  # (the package exports a function of that name)
    with mock.patch.object(tc, "affinity", _affinity_shape), \
            mock.patch.object(tc, "gather", _gather_shape), \
            mock.patch.object(tc, "scatter", _scatter_shape), \
            mock.patch.object(hcformer.layers.clustering, "affinity", _affinity_shape):
        analysis = flop_count_analysis(Features(backbone), (image,))
        by_module = analysis.by_module()
    total = analysis.total() + hc
    aux = by_module.get("backbone.aux", 0)
    clustering = sum(m.last_clustering_macs for m in backbone.modules() if isinstance(m, ExpeditSwinStage))
    return {
        "fvcore + HC clustering (analytic)": total / 1e9,
        "HC clustering (analytic)": hc / 1e9,
        "swin": (total - aux) / 1e9,
        "aux": aux / 1e9,
        "clustering (analytic)": clustering / 1e9,
        "swin + clustering": (total - aux + clustering) / 1e9,
        "stage 3 (layers.2)": by_module.get("backbone.layers.2", 0) / 1e9,
        "unsupported ops": dict(analysis.unsupported_ops()),
    }


def latency(backbone: nn.Module, image: Tensor, runs: int) -> float:
    with torch.no_grad():
        backbone(image)  # warm-up
        start = time.perf_counter()
        for _ in range(runs):
            backbone(image)
    return (time.perf_counter() - start) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input-size", default="1024x1024", help="HxW of the (random) image")
    parser.add_argument("--latency-runs", type=int, default=0, help="also time this many CPU forward passes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = get_cfg()
    add_hcformer_config(cfg)
    add_expedit_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.EXPEDIT.ENABLED = False  # build the original, then expedite a copy
    h, _, w = args.input_size.lower().partition("x")
    image = torch.randn(1, 3, int(h), int(w))

    torch.manual_seed(0)
    original = build_backbone(cfg).eval()
    expedited = copy.deepcopy(original)
    cfg.MODEL.EXPEDIT.ENABLED = True
    apply_expedit(expedited, cfg)

    results = {}
    for name, backbone in (("original", original), ("expedit", expedited)):
        with torch.no_grad():
            results[name] = count(backbone, image)
        if args.latency_runs:
            results[name]["latency_s"] = latency(backbone, image, args.latency_runs)
    e = cfg.MODEL.EXPEDIT
    results["setting"] = {
        "input": args.input_size, "stage": e.STAGE, "alpha": e.ALPHA, "K": cfg.MODEL.SWIN.WINDOW_SIZE,
        "k": e.CLUSTER_WINDOW, "lambda": e.LAMBDA, "kappa": e.KAPPA, "t": e.TEMPERATURE, "topk": e.TOPK,
    }
    o, x = results["original"]["swin"], results["expedit"]["swin + clustering"]
    results["swin reduction %"] = 100 * (1 - x / o)
    if args.json:
        print(json.dumps(results, indent=1, default=float))
        return
    print(f"setting: {results['setting']}")
    for key in ("fvcore + HC clustering (analytic)", "HC clustering (analytic)", "swin", "aux", "clustering (analytic)", "swin + clustering", "stage 3 (layers.2)"):
        print(f"{key:>34}: {results['original'][key]:9.2f} G -> {results['expedit'][key]:9.2f} G")
    if args.latency_runs:
        print(f"{'latency (CPU)':>34}: {results['original']['latency_s']:9.3f} s -> {results['expedit']['latency_s']:9.3f} s")
    print(f"Swin FLOPs cut by {results['swin reduction %']:.1f} % (clustering included)")
    print(f"ops fvcore skipped (expedit): {results['expedit']['unsupported ops']}")


if __name__ == "__main__":
    main()

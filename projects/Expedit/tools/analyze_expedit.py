#!/usr/bin/env python
"""Backbone FLOPs (and optionally CPU latency) of a config's HC-Swin with and without Expedit.

FLOPs are fvcore's (one multiply-add = one FLOP), counted on the backbone alone (``HCSwin``;
with HCFormer+, the res5 encoder ``aux`` is part of it and reported on its own line). The model
is randomly initialised: counts do not depend on the weights. The products of the local
clustering primitive are counted analytically and reported on their own lines (Expedit's
clustering / reconstruction, HCFormer's clustering layers): see
``expedit.analysis.backbone_flops``. Latency (``--latency-runs``: the median of that many
timed forward passes after one warm-up) runs the primitive's default (blocked) backend.

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
from pathlib import Path

import torch
from detectron2.modeling import build_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the expedit package

from expedit.analysis import backbone_flops, expedit_cfg, median_latency  # noqa: E402
from hcformer.engine.inference_model import inference_cfg  # noqa: E402
from expedit.config import apply_expedit  # noqa: E402


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

    cfg = expedit_cfg(inference_cfg(args.config_file, args.opts, freeze=False), enabled=False)  # build the original, then expedite a copy
    cfg.MODEL.DEVICE = "cpu"
    h, _, w = args.input_size.lower().partition("x")
    image = torch.randn(1, 3, int(h), int(w))

    torch.manual_seed(0)
    original = build_backbone(cfg).eval()
    cfg = expedit_cfg(cfg, enabled=True)
    expedited = apply_expedit(copy.deepcopy(original), cfg)

    results = {}
    for name, backbone in (("original", original), ("expedit", expedited)):
        results[name] = backbone_flops(backbone, image)
        if args.latency_runs:
            results[name]["latency_s"] = median_latency(lambda: backbone(image), args.latency_runs)
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

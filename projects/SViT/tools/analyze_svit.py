#!/usr/bin/env python
"""Parameters and FLOPs of the SViT classifiers and of HCFormer models with an SViT backbone.

FLOPs are fvcore's (one multiply-add = one FLOP) with the operator handles of
``hcformer.engine.analysis``, as tools/analyze_model.py counts them. fvcore does not see inside
the local clustering primitive (``affinity`` / ``scatter`` / ``gather`` are autograd functions,
traced as opaque ``prim::PythonOp`` nodes), so their multiply-adds are counted analytically from
the shapes seen in the forward pass and reported on their own line:

- a super-token attention with grid > 1 on a map of N tokens (padded to grid multiples) of C
  channels: 9·N·C per association, 9·N·C per super-token update, 9·N·C for the upsampling,
  i.e. (2·N_ITER + 1)·9·N·C (27·N·C with one iteration, eq. (8) + the upsampling of the paper);
- an HCFormer clustering layer on a fine map of N pixels: 9·N·EMB_DIM for its affinities.

(The decoding of the masks through the hierarchy, also local-clustering products, belongs to
the meta-architecture and is left out, as in tools/analyze_model.py's numbers.)

    # the released sizes (params / FLOPs at 224²) of SViT-S, B, L
    python projects/SViT/tools/analyze_svit.py --classifier small base large
    # HC-SViT-S in HCFormer, COCO protocol (a 640×480 image resized to 800×1067)
    python projects/SViT/tools/analyze_svit.py \\
        --config-file projects/SViT/configs/coco/panoptic-segmentation/hcformer_svit_small_bs16_50ep.yaml \\
        --input-size 800x1067 --output-size 480x640
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from fvcore.nn import parameter_count
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the svit package

import svit  # noqa: E402  registers the backbones
from hcformer.engine.analysis import InferenceWrapper, flop_count_analysis  # noqa: E402
from hcformer.layers.clustering import ClusteringLayer  # noqa: E402
from svit.super_token_attention import SuperTokenAttention  # noqa: E402


def parse_size(text: str) -> Tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def local_clustering_flops(model: nn.Module, run) -> int:
    """Multiply-adds of the local clustering products in ``run()`` (a forward pass of ``model``)."""
    total = 0

    def on_attention(module: SuperTokenAttention, args, output) -> None:
        nonlocal total
        if module.samples_super_tokens:
            B, C, H, W = args[0].shape
            gy, gx = module.grid
            padded = (H + -H % gy) * (W + -W % gx)
            total += (2 * module.n_iter + 1) * 9 * B * padded * C

    def on_clustering(module: ClusteringLayer, args, output) -> None:
        nonlocal total
        B, _, H, W = args[0].shape
        total += 9 * B * H * W * module.fine_emb.out_channels

    handles = []
    for m in model.modules():
        if isinstance(m, SuperTokenAttention):
            handles.append(m.register_forward_hook(on_attention))
        elif isinstance(m, ClusteringLayer):
            handles.append(m.register_forward_hook(on_clustering))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


def analyze(model: nn.Module, wrapper: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Dict[str, object]:
    """{"params", "fvcore_flops" (by top-level module), "clustering_flops", "unsupported_ops"}."""
    model.eval()
    with torch.no_grad():
        analysis = flop_count_analysis(wrapper, inputs)
        by_module = analysis.by_module()
        total = analysis.total()
    prefix = "model." if wrapper is not model else ""
    children = {name: by_module.get(prefix + name, 0) for name, _ in model.named_children()}
    return {
        "params": parameter_count(model)[""],
        "fvcore_flops": {"total": total, **children},
        "clustering_flops": local_clustering_flops(model, lambda: wrapper(*inputs)),
        "unsupported_ops": dict(analysis.unsupported_ops()),
    }


def classifier_report(variant: str, size: Tuple[int, int]) -> Dict[str, object]:
    torch.manual_seed(0)
    model = svit.svit_classifier(variant)
    result = analyze(model, model, (torch.rand(1, 3, *size),))
    result["model"] = f"SViT-{variant[0].upper()} classifier @ {size[0]}x{size[1]}"
    return result


def config_report(config_file: str, opts: List[str], size: Tuple[int, int], output_size: Optional[Tuple[int, int]]):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from hcformer.config import add_hcformer_config

    cfg = get_cfg()
    add_hcformer_config(cfg)
    svit.add_svit_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"] + opts)
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out_h, out_w = output_size or size
    image = torch.rand(3, *size) * 255
    result = analyze(model, InferenceWrapper(model, out_h, out_w), (image,))
    result["model"] = f"{config_file} @ {size[0]}x{size[1]} -> {out_h}x{out_w}"
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", nargs="+", choices=sorted(svit.SVIT_VARIANTS), default=[])
    parser.add_argument("--config-file", metavar="FILE")
    parser.add_argument("--input-size", type=parse_size, metavar="HxW", help="default 224x224 / 800x1067")
    parser.add_argument("--output-size", type=parse_size, metavar="HxW")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    results = [classifier_report(v, args.input_size or (224, 224)) for v in args.classifier]
    if args.config_file:
        results.append(config_report(args.config_file, args.opts, args.input_size or (800, 1067), args.output_size))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        flops = r["fvcore_flops"]
        extra = r["clustering_flops"]
        parts = ", ".join(f"{k} {v / 1e9:.3f}G" for k, v in flops.items() if k != "total")
        print(f"{r['model']}\n  params {r['params']:,} ({r['params'] / 1e6:.2f}M)"
              f"\n  FLOPs fvcore {flops['total'] / 1e9:.3f}G ({parts})"
              f"\n  + local clustering (analytic) {extra / 1e9:.3f}G = {(flops['total'] + extra) / 1e9:.3f}G"
              f"\n  not counted by fvcore: {sorted(r['unsupported_ops'])}")


if __name__ == "__main__":
    main()

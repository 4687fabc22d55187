#!/usr/bin/env python
"""Parameters and FLOPs of the SViT classifiers and of HCFormer models with an SViT backbone.

FLOPs are fvcore's (one multiply-add = one FLOP) with the operator handles of
``hcformer.engine.analysis``, as tools/analyze_model.py counts them: the local clustering
primitive (``affinity`` / ``scatter`` / ``gather``, traced as ``prim::PythonOp`` nodes) is
counted at 9 multiply-adds per fine position and channel, so a super-token attention with one
iteration costs 27·N·C (eq. (8) of the paper + the upsampling) and an HCFormer clustering
layer 9·N·EMB_DIM for its affinities.

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


def parse_size(text: str) -> Tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def analyze(model: nn.Module, wrapper: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Dict[str, object]:
    """{"params", "fvcore_flops" (by top-level module), "unsupported_ops"}."""
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
        parts = ", ".join(f"{k} {v / 1e9:.3f}G" for k, v in flops.items() if k != "total")
        print(f"{r['model']}\n  params {r['params']:,} ({r['params'] / 1e6:.2f}M)"
              f"\n  FLOPs fvcore {flops['total'] / 1e9:.3f}G ({parts})"
              f"\n  not counted by fvcore: {sorted(r['unsupported_ops'])}")


if __name__ == "__main__":
    main()

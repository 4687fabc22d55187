#!/usr/bin/env python
"""Parameters and FLOPs (fvcore: one multiply-add = one FLOP) of PaCa models.

    # the ImageNet classifiers at 224x224 next to the released models' numbers
    python projects/PaCa/tools/analyze_paca.py --classifiers
    # a config's model on one random image (tools/analyze_model.py, with the PaCa keys)
    python projects/PaCa/tools/analyze_paca.py \\
        --config-file projects/PaCa/configs/ade20k/semantic-segmentation/paca_head_paca_tiny_bs16_160k.yaml \\
        --input-size 512x512
"""
import argparse
import os
import sys
from typing import Dict, Tuple

import torch
from detectron2.modeling import build_model
from fvcore.nn import parameter_count

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hcformer  # noqa: E402,F401
from hcformer.engine.analysis import InferenceWrapper, flop_count_analysis  # noqa: E402
from paca.engine import get_paca_cfg  # noqa: E402
from paca.modeling import paca_classifier  # noqa: E402

# name → (variant, overrides, released params (M), released FLOPs @224 (G)); reference facts
CLASSIFIERS: Dict[str, Tuple[str, dict, float, float]] = {
    "PaCa-Tiny": ("tiny", {}, 12.20, 3.24),
    "PaCa-Small": ("small", {}, 22.04, 5.53),
    "PaCa-Base": ("base", {}, 46.91, 9.57),
    "PaCa-Small, MLP clustering": ("small", dict(clustering="mlp"), 22.64, 5.89),
    "PaCa-Small, block-wise, M=100 x4": ("small", dict(clustering_scope="block", num_clusters=(100,) * 4), 24.19, 6.13),
    "PaCa^ec-Small (teacher: our design)": (
        "small",
        dict(depths=(3, 3, 7, 3), num_clusters=(100,) * 4, teacher_depths=(2, 2, 2, 2)),
        21.08,
        5.44,
    ),
}


def classifier_counts(variant: str, overrides: dict) -> Tuple[float, float]:
    """(parameters in M, FLOPs in G on one 224×224 image) of a PaCa classifier."""
    model = paca_classifier(variant, **overrides).eval()
    params = parameter_count(model)[""] / 1e6
    with torch.no_grad():
        flops = flop_count_analysis(model, (torch.randn(1, 3, 224, 224),)).total() / 1e9
    return params, flops


def classifier_table() -> None:
    print("| model | params (M) | released | FLOPs @224 (G) | released |")
    print("|---|---|---|---|---|")
    for name, (variant, overrides, ref_params, ref_flops) in CLASSIFIERS.items():
        params, flops = classifier_counts(variant, overrides)
        print(
            f"| {name} | {params:.2f} | {ref_params:.2f} ({100 * (params / ref_params - 1):+.2f} %) "
            f"| {flops:.2f} | {ref_flops:.2f} ({100 * (flops / ref_flops - 1):+.2f} %) |",
            flush=True,
        )


def config_counts(config_file: str, size: Tuple[int, int], opts) -> None:
    cfg = get_paca_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(opts))
    model = build_model(cfg).eval()
    counts = parameter_count(model)
    print("parameters: " + ", ".join(f"{k or 'total'} {counts[k] / 1e6:.2f}M" for k in ["", *dict(model.named_children())]))
    image = torch.rand(3, *size) * 255
    with torch.no_grad():
        analysis = flop_count_analysis(InferenceWrapper(model, *size), (image,))
        by_module = analysis.by_module()
    parts = [f"total {analysis.total() / 1e9:.2f}G"]
    parts += [f"{name} {by_module.get(f'model.{name}', 0) / 1e9:.2f}G" for name, _ in model.named_children()]
    print(f"FLOPs at {size[0]}x{size[1]}: " + ", ".join(parts))
    print(f"operators not counted: {sorted(analysis.unsupported_ops())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifiers", action="store_true")
    parser.add_argument("--config-file")
    parser.add_argument("--input-size", default="512x512", metavar="HxW")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.classifiers:
        classifier_table()
    if args.config_file:
        h, w = (int(v) for v in args.input_size.lower().split("x"))
        config_counts(args.config_file, (h, w), args.opts)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Parameters, FLOPs and activations of a config's model, counted with fvcore.

fvcore counts one multiply-add as one FLOP (as the paper's tables and Mask2Former do); see
``hcformer.engine.analysis`` for the operators added to its defaults. The model is randomly
initialised: the counts do not depend on the weights. Counts are split into the top-level
modules (backbone, sem_seg_head) and "other": what the meta-architecture does itself (mask
decoding through the hierarchy, resizing, post-processing; e.g. the semantic output of a
panoptic config, which MODEL.MASK_FORMER.TEST.SEMANTIC_ON False leaves out).

    # FLOPs and parameters on one synthetic image (no dataset needed)
    python tools/analyze_model.py --tasks flop parameter --input-size 800x1216 \\
        --config-file configs/coco/panoptic-segmentation/hcformer_R50_bs16_50ep.yaml
    # mean FLOPs over the first 10 images of DATASETS.TEST[0], as JSON
    python tools/analyze_model.py --config-file <config> --tasks flop -n 10 --json
"""
import argparse
import json
import logging
import re
import sys
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from fvcore.nn import flop_count_table, parameter_count, parameter_count_table
from torch import nn

import hcformer  # noqa: F401  registers the models
import hcformer.data  # noqa: F401  registers the datasets
from hcformer.engine.analysis import (
    InferenceWrapper,
    activation_count_analysis,
    flop_count_analysis,
)
from hcformer.engine.inference_model import inference_cfg

logger = logging.getLogger("hcformer.analyze_model")


def parse_size(text: str) -> Tuple[int, int]:
    height, _, width = text.lower().partition("x")
    try:
        return int(height), int(width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 512x512), got {text!r}") from None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--project", metavar="DIR", help="a project to import, e.g. projects/PaCa (default: the config file's)"
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["flop", "parameter", "activation"],
        default=["flop", "parameter"],
    )
    parser.add_argument(
        "-n", "--num-inputs", type=int, default=10, help="dataset images to average over"
    )
    parser.add_argument(
        "--input-size",
        type=parse_size,
        metavar="HxW",
        help="count on one random image of this size instead of dataset images",
    )
    parser.add_argument(
        "--output-size",
        type=parse_size,
        metavar="HxW",
        help="with --input-size: the original image size the outputs are resized to "
        "(default: the input size). The paper's COCO protocol is a 480x640 image resized to "
        "800x1067: --input-size 800x1067 --output-size 480x640",
    )
    parser.add_argument("--max-depth", type=int, default=3, help="module depth of the tables")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args()


def iterate_images(
    cfg: CfgNode, args: argparse.Namespace
) -> Iterator[Tuple[torch.Tensor, int, int]]:
    """(image (C, H, W) as the model receives it, original height, original width)."""
    if args.input_size is not None:
        height, width = args.input_size
        out_h, out_w = args.output_size or args.input_size
        yield torch.rand(3, height, width) * 255, out_h, out_w
        return
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    for i, (record,) in enumerate(loader):
        if i >= args.num_inputs:
            break
        yield record["image"], record["height"], record["width"]


def summarise(model: nn.Module, totals: Dict[str, int]) -> Dict[str, int]:
    """{"total", <each top-level module> (backbone, sem_seg_head, ...), "other"} from fvcore's
    by_module() of the wrapper; "other" is what the meta-architecture computes itself
    (decoding the masks through the hierarchy, resizing, post-processing)."""
    summary = {"total": totals[""]}
    for name, _ in model.named_children():
        summary[name] = totals.get(f"model.{name}", 0)
    summary["other"] = summary["total"] - sum(summary[name] for name, _ in model.named_children())
    return summary


def count(
    model: nn.Module, cfg: CfgNode, args: argparse.Namespace, task: str
) -> Tuple[Dict[str, Any], Any]:
    """Mean and std over the inputs of the FLOP or activation summaries, with the operators
    fvcore could not count; and the fvcore analysis of the first input (for its table)."""
    analyse = flop_count_analysis if task == "flop" else activation_count_analysis
    summaries, first = [], None
    for image, height, width in iterate_images(cfg, args):
        analysis = analyse(InferenceWrapper(model, height, width), (image.to(cfg.MODEL.DEVICE),))
        summaries.append(summarise(model, analysis.by_module()))
        if first is None:
            first = analysis
    if first is None:
        raise RuntimeError(f"No input image: {cfg.DATASETS.TEST[0]} yielded none.")
    stats = {
        "mean": {k: float(np.mean([s[k] for s in summaries])) for k in summaries[0]},
        "std": {k: float(np.std([s[k] for s in summaries])) for k in summaries[0]},
        "num_inputs": len(summaries),
        "unsupported_ops": dict(first.unsupported_ops()),
    }
    return stats, first


def log_summary(results: Dict[str, Any]) -> None:
    if "parameters" in results:
        parts = [f"{name} {n / 1e6:.2f}M" for name, n in results["parameters"].items()]
        logger.info("parameters: " + ", ".join(parts))
    for key, unit, suffix in (("flops", 1e9, "G"), ("activations", 1e6, "M")):
        if key not in results:
            continue
        stats = results[key]
        parts = [
            f"{name} {mean / unit:.2f}{suffix} ± {stats['std'][name] / unit:.2f}"
            for name, mean in stats["mean"].items()
        ]
        logger.info(f"{key} (mean over {stats['num_inputs']} inputs): " + ", ".join(parts))
        logger.info(f"{key}: operators not counted: {sorted(stats['unsupported_ops'])}")


def main() -> None:
    args = parse_args()
    # Logs go to stderr under --json, so that stdout holds only the JSON object.
    if args.json:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    else:
        setup_logger(name="fvcore")
        setup_logger(name="hcformer")
    cfg = inference_cfg(args.config_file, [*args.opts, "DATALOADER.NUM_WORKERS", "0"], project=args.project)
    model = build_model(cfg).eval()
    results: Dict[str, Any] = {"config_file": args.config_file}

    if "parameter" in args.tasks:
        counts = parameter_count(model)
        results["parameters"] = {"total": counts[""]}
        results["parameters"].update({name: counts[name] for name, _ in model.named_children()})
        if not args.json:
            logger.info("Parameters:\n" + parameter_count_table(model, max_depth=args.max_depth))

    analyses = {}
    with torch.no_grad():
        for task, key in (("flop", "flops"), ("activation", "activations")):
            if task in args.tasks:
                results[key], analyses[key] = count(model, cfg, args, task)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    if analyses:
        if "flops" in analyses:
            table = flop_count_table(
                analyses["flops"], args.max_depth, activations=analyses.get("activations")
            )
        else:  # fvcore's table only knows FLOPs: relabel the column, keeping its width
            table = flop_count_table(analyses["activations"], args.max_depth)
            table = re.sub(r"#flops( *)", lambda m: "#acts".ljust(len(m[0])), table, count=1)
        logger.info("Counts of the first input (module names under the wrapper):\n" + table)
    log_summary(results)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""`make demo`: train HCFormer on the synthetic shapes from scratch on CPU, evaluate, draw.

    python tools/demo_shapes.py [--output output/demo] [--config-file ...] [KEY VALUE ...]

1. generates the shapes dataset on first use (under $DETECTRON2_DATASETS, default ./datasets);
2. trains the config (default: configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml)
   with detectron2's trainer (progress and ETA on the console);
3. evaluates PQ / AP / mIoU and the undersegmentation error of every hierarchy level;
4. writes hierarchy panels of a few validation images (tools/visualize_hierarchy.py, in this process);
5. prints a summary and writes it to <output>/summary.json.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--output", default=os.path.join(ROOT, "output/demo"), help="output directory")
    parser.add_argument("--num-panels", type=int, default=4, help="validation images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args()


def flatten_results(results: dict) -> dict:
    """The headline numbers of detectron2's nested results dict."""
    flat = {}
    for task, metrics in results.items():
        for key in ("PQ", "PQ_th", "PQ_st", "AP", "mIoU"):
            if key in metrics:
                flat[key] = round(float(metrics[key]), 2)
        if task == "hierarchy":
            flat.update({k: round(float(v), 4) for k, v in metrics.items()})
    return flat


def main() -> None:
    args = parse_args()
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from detectron2.engine import default_argument_parser
    from visualize_hierarchy import parse_args as hierarchy_args
    from visualize_hierarchy import visualize as visualize_hierarchy

    from hcformer.engine.setup import setup
    from hcformer.engine.trainer import Trainer

    train_args = default_argument_parser().parse_args(
        ["--config-file", args.config_file, "OUTPUT_DIR", args.output] + args.opts
    )
    cfg = setup(train_args)
    start = time.time()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()  # evaluates after the last iteration (TEST.EVAL_PERIOD)
    if not results:
        results = Trainer.test(cfg, trainer.model)
    train_eval_s = time.time() - start

    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    panels = os.path.join(cfg.OUTPUT_DIR, "hierarchy")
    # in this process (the loggers set up above), which saves a second start of Python, torch and detectron2
    visualize_hierarchy(hierarchy_args(
        ["--config-file", args.config_file, "--dataset", cfg.DATASETS.TEST[0], "--num-images", str(args.num_panels),
         "--output", panels, "--json", os.path.join(panels, "summary.json"), "MODEL.WEIGHTS", weights] + args.opts
    ))
    summary = {
        "config": os.path.relpath(args.config_file, ROOT),
        "iterations": cfg.SOLVER.MAX_ITER,
        "train_and_eval_seconds": round(train_eval_s, 1),
        "total_seconds": round(time.time() - start, 1),
        "torch_threads": __import__("torch").get_num_threads(),
        **flatten_results(results),
    }
    with open(os.path.join(cfg.OUTPUT_DIR, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n== HCFormer shapes demo ==")
    for key, value in summary.items():
        print(f"{key:>24}: {value}")
    print(f"{'pictures':>24}: {panels}")


if __name__ == "__main__":
    main()

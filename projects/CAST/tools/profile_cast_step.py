#!/usr/bin/env python
"""Time share of superpixels, farthest point sampling and graph pooling in HC-CAST training steps.

Wraps the three stages with timers (wall clock, forward only; their backward runs inside the
total) and times whole steps (forward + backward) of the config's model on random images:

    python projects/CAST/tools/profile_cast_step.py \\
        --config-file projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml --size 128 --batch 4
"""
import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cast  # noqa: E402
import cast.graph_pool as graph_pool  # noqa: E402
import cast.model as cast_model  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Instances  # noqa: E402

import hcformer  # noqa: E402,F401
from hcformer.config import add_hcformer_config  # noqa: E402

TIMES: Dict[str, float] = defaultdict(float)


def timed(name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        TIMES[name] += time.perf_counter() - start
        return out
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.CAST.DECODE_STRIDE 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = get_cfg()
    add_hcformer_config(cfg)
    cast.add_cast_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).train()
    # the model looks these up at call time in their modules: wrap them there
    cast_model.compute_superpixels = timed("superpixels", cast_model.compute_superpixels)
    graph_pool.farthest_point_sampling = timed("fps", graph_pool.farthest_point_sampling)
    for pool in model.backbone.encoder.pools:
        pool.forward = timed("graph pooling (incl. fps)", pool.forward)

    inputs = []
    for _ in range(args.batch):
        masks = torch.zeros(2, args.size, args.size, dtype=torch.bool)
        masks[0, : args.size // 2, : args.size // 2] = True
        masks[1, args.size // 2:] = True
        inst = Instances((args.size, args.size), gt_classes=torch.tensor([0, 5]), gt_masks=BitMasks(masks))
        inputs.append({"image": torch.randint(0, 256, (3, args.size, args.size)).float(), "instances": inst})

    sum(model(inputs).values()).backward()  # warm-up
    TIMES.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        model.zero_grad()
        sum(model(inputs).values()).backward()
    total = time.perf_counter() - start
    print(f"{args.steps} steps, batch {args.batch} × {args.size}², {args.threads} thread(s): "
          f"{1000 * total / args.steps:.1f} ms/step")
    for name, seconds in TIMES.items():
        print(f"  {name:28s} {1000 * seconds / args.steps:7.1f} ms/step  {100 * seconds / total:5.1f} %")


if __name__ == "__main__":
    main()

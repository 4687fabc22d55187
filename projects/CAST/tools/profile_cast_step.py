#!/usr/bin/env python
"""Time share of superpixels, farthest point sampling and graph pooling in HC-CAST training steps.

Times whole steps (forward + backward) of the config's model on random images, then runs the
same steps under ``torch.profiler`` and reads the time of the stages the model labels with
``record_function`` ("cast.superpixels", "cast.farthest_point_sampling", "cast.graph_pool";
forward only, their backward runs inside the step total):

    python projects/CAST/tools/profile_cast_step.py \\
        --config-file projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml --size 128 --batch 4
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cast  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Instances  # noqa: E402

import hcformer  # noqa: E402,F401
from hcformer.config import add_hcformer_config  # noqa: E402

# the labels of cast.model / cast.graph_pool -> the names printed
STAGES = {
    "cast.superpixels": "superpixels",
    "cast.farthest_point_sampling": "fps",
    "cast.graph_pool": "graph pooling (incl. fps)",
}


def train_steps(model, inputs, steps: int) -> float:
    """Seconds per forward + backward step."""
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad()
        sum(model(inputs).values()).backward()
    return (time.perf_counter() - start) / steps


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
    inputs = []
    for _ in range(args.batch):
        masks = torch.zeros(2, args.size, args.size, dtype=torch.bool)
        masks[0, : args.size // 2, : args.size // 2] = True
        masks[1, args.size // 2:] = True
        inst = Instances((args.size, args.size), gt_classes=torch.tensor([0, 5]), gt_masks=BitMasks(masks))
        inputs.append({"image": torch.randint(0, 256, (3, args.size, args.size)).float(), "instances": inst})

    train_steps(model, inputs, 1)  # warm-up
    step = train_steps(model, inputs, args.steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        profiled_step = train_steps(model, inputs, args.steps)
    stage_seconds = {event.key: event.cpu_time_total / 1e6 / args.steps
                     for event in profile.key_averages() if event.key in STAGES}
    print(f"{args.steps} steps, batch {args.batch} × {args.size}², {args.threads} thread(s): "
          f"{1000 * step:.1f} ms/step ({1000 * profiled_step:.1f} ms under the profiler)")
    for label, name in STAGES.items():
        seconds = stage_seconds.get(label, 0.0)
        print(f"  {name:28s} {1000 * seconds:7.1f} ms/step  {100 * seconds / profiled_step:5.1f} %")


if __name__ == "__main__":
    main()

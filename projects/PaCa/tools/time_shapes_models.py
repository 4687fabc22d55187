#!/usr/bin/env python
"""Training-step and inference time of the two shapes models compared in RESULTS.md, measured
in one process: HCFormer + HC-PaCa-Tiny and the PaCa head + PaCa-Tiny (configs/shapes/,
random weights).

- training step: forward, backward and optimizer step (PaCaTrainer's optimizer: AdamW with
  the config's gradient clipping) of one batch of SOLVER.IMS_PER_BATCH images from the model's
  own training loader. The batches are loaded before the clock starts: data loading is not
  timed.
- inference: ``model([image])`` in eval mode without gradients on one validation image
  resized as at test time, the mean of --inference-calls calls.

The measurements are interleaved: every round times each model once, in an order that
alternates from round to round, so that the load of a shared machine falls on both models
alike. The table shows medians over --rounds, after --warmup rounds that are not counted.

    # RESULTS.md: one thread, 10 rounds, 5 inference calls per round
    OMP_NUM_THREADS=1 python projects/PaCa/tools/time_shapes_models.py --threads 1 \\
        --rounds 10 --inference-calls 5 --json output/paca/shapes_timings.json
    # a quick check that it runs
    python projects/PaCa/tools/time_shapes_models.py --rounds 2 --warmup 1 --inference-calls 1

Trailing KEY VALUE pairs override both configs (e.g. DATASETS.TRAIN for another dataset).
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger
from torch import nn
from tqdm import tqdm

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import hcformer  # noqa: E402,F401  registers HCFormer (inference_cfg: the shapes datasets)
from hcformer.engine.inference_model import inference_cfg  # noqa: E402
from paca.engine import PaCaTrainer  # noqa: E402  importing paca registers its models and MODEL.PACA.*

logger = logging.getLogger("paca.time_shapes_models")

# name → config, the two models of RESULTS.md
MODELS: Dict[str, Path] = {
    "HCFormer + HC-PaCa-Tiny": PROJECT / "configs" / "shapes" / "hcformer_hc_paca_tiny_shapes.yaml",
    "PaCa head + PaCa-Tiny": PROJECT / "configs" / "shapes" / "paca_head_paca_tiny_shapes.yaml",
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds; the table gives their medians")
    parser.add_argument("--warmup", type=int, default=2, help="rounds run first and not counted")
    parser.add_argument("--inference-calls", type=int, default=5, help="inference calls per model and round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", metavar="FILE", help="write the settings and every time to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both models: KEY VALUE ...")
    args = parser.parse_args(argv)
    for name in ("rounds", "inference_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


@dataclass
class TimedModel:
    """One model with what it is timed on, and its times (seconds) of every counted round."""

    name: str
    cfg: CfgNode
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: List[List[Dict]]  # one training batch per round, warm-up included
    test_input: List[Dict]
    train_step_s: List[float] = field(default_factory=list)
    inference_s: List[float] = field(default_factory=list)


def build(name: str, config_file: Path, opts: List[str], num_batches: int) -> TimedModel:
    """The model, its optimizer, ``num_batches`` training batches and one test image."""
    # DATALOADER.NUM_WORKERS 0: no loader processes competing with the measurement
    cfg = inference_cfg(str(config_file), ["DATALOADER.NUM_WORKERS", "0", *opts])
    model = PaCaTrainer.build_model(cfg)
    optimizer = PaCaTrainer.build_optimizer(cfg, model)
    loader = iter(PaCaTrainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(num_batches)]
    test_input = next(iter(PaCaTrainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])))
    return TimedModel(name, cfg, model, optimizer, batches, test_input)


def clock(device: torch.device) -> Callable[[], float]:
    """perf_counter, after waiting for the GPU's queued work on CUDA."""

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def train_step(timed: TimedModel, batch: List[Dict], now: Callable[[], float]) -> float:
    """Seconds of one forward + backward + optimizer step, as detectron2's SimpleTrainer."""
    timed.model.train()
    start = now()
    losses = timed.model(batch)
    loss = sum(losses.values())
    timed.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    timed.optimizer.step()
    return now() - start


@torch.no_grad()
def inference(timed: TimedModel, calls: int, now: Callable[[], float]) -> float:
    """Mean seconds of one inference call on the test image."""
    timed.model.eval()
    start = now()
    for _ in range(calls):
        timed.model(timed.test_input)
    return (now() - start) / calls


def measure(models: List[TimedModel], rounds: int, warmup: int, calls: int) -> None:
    """Fill every model's times: per round, each model's step then its inference, in an order
    reversed every round (A B, B A, ...) so that neither model always runs right after the other."""
    now = clock(models[0].model.device)
    for r in tqdm(range(warmup + rounds), desc="rounds (warm-up first)", unit="round"):
        for timed in models if r % 2 == 0 else models[::-1]:
            step = train_step(timed, timed.batches[r], now)
            call = inference(timed, calls, now)
            if r >= warmup:
                timed.train_step_s.append(step)
                timed.inference_s.append(call)


def summary(models: List[TimedModel], args: argparse.Namespace) -> Dict:
    """Settings, machine and every time, with the medians (what the table shows)."""
    device = models[0].model.device
    return {
        "settings": {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "inference_calls": args.inference_calls,
            "opts": args.opts,
        },
        "machine": {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "models": {
            t.name: {
                "config": os.path.relpath(MODELS[t.name], PROJECT.parents[1]),
                "batch_size": t.cfg.SOLVER.IMS_PER_BATCH,
                "train_step_s": t.train_step_s,
                "inference_s": t.inference_s,
                "median_train_step_s": statistics.median(t.train_step_s),
                "median_inference_ms": 1000 * statistics.median(t.inference_s),
            }
            for t in models
        },
    }


def print_table(result: Dict) -> None:
    rounds, calls = result["settings"]["rounds"], result["settings"]["inference_calls"]
    print(f"| | train step (median of {rounds}) | inference, 1 image (median of {rounds}×{calls}) |")
    print("|---|---|---|")
    for name, times in result["models"].items():
        print(
            f"| {name} | {times['median_train_step_s']:.2f} s (batch {times['batch_size']}) "
            f"| {times['median_inference_ms']:.0f} ms |"
        )


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    setup_logger(name="paca")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = []
    for name, config_file in MODELS.items():
        logger.info("Building %s (%s) and loading %d batches", name, config_file.name, args.warmup + args.rounds)
        models.append(build(name, config_file, args.opts, args.warmup + args.rounds))
    measure(models, args.rounds, args.warmup, args.inference_calls)
    result = summary(models, args)
    print_table(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        logger.info("Wrote %s", args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python
"""Inference latency and training-step cost of HCFormer, with random weights.

- eval: latency per image (batch 1, all of the config's outputs: semantic, instance and
  panoptic for the COCO panoptic configs) and peak memory, for HCFormer R50 at hierarchical
  levels 0–3 and HCFormer+ R50 (by default), HCFormer Swin-S and HCFormer HC-SViT-S
  (``--models``), at 800×1216;
- train: one forward + backward (no optimiser step, no AMP) of a batch of 2 images of
  512×512 with synthetic segments, time and peak memory, with MODEL.HC.POINT_DECODING on
  (decode only what the losses sample) and off (decode every prediction), and off with the
  clustering primitive's "reference" backend (the loop implementation of before).

Times are medians of interleaved repetitions (every model / mode once per round, in alternating order). Peak
memory is measured in one child process per model or mode, as in bench_local_clustering.py:
the peak resident set size (VmHWM, reset just before the measured call) above the resident
size before it, with glibc returning allocations over 64 KiB to the system on free; on CUDA
``torch.cuda.max_memory_allocated``. Model weights are allocated before the measurement and
not counted; gradients (training) are.

    python benchmarks/bench_model.py                     # everything, ~10 min on 2 cores
    python benchmarks/bench_model.py --skip-eval --repeats 2 --json train.json
    python benchmarks/bench_model.py --smoke             # a tiny model, seconds, for tests
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_local_clustering import PeakMemory, machine_info, synchronize  # noqa: E402
from synthetic_inputs import eval_input, synthetic_batch  # noqa: E402

from hcformer.layers.local_clustering import use_backend  # noqa: E402

PANOPTIC = "configs/coco/panoptic-segmentation"
# inference models: name → (config relative to the repository, project package to import)
EVAL_MODELS = {
    "HCFormer R50 level 0": (f"{PANOPTIC}/hcformer_R50_bs16_50ep_level0.yaml", None),
    "HCFormer R50 level 1": (f"{PANOPTIC}/hcformer_R50_bs16_50ep_level1.yaml", None),
    "HCFormer R50 level 2": (f"{PANOPTIC}/hcformer_R50_bs16_50ep_level2.yaml", None),
    "HCFormer R50 level 3": (f"{PANOPTIC}/hcformer_R50_bs16_50ep.yaml", None),
    "HCFormer+ R50": (f"{PANOPTIC}/hcformer+_R50_bs16_100ep.yaml", None),
    "HCFormer Swin-S": (f"{PANOPTIC}/swin/hcformer_swin_small_bs16_50ep.yaml", None),
    "HCFormer HC-SViT-S": ("projects/SViT/configs/coco/panoptic-segmentation/hcformer_svit_small_bs16_50ep.yaml", "SViT"),
}
DEFAULT_EVAL_MODELS = [name for name in EVAL_MODELS if "R50" in name]
TRAIN_CONFIG = f"{PANOPTIC}/hcformer_R50_bs16_50ep.yaml"
# what the backbone recomputes in backward: MODEL.RESNETS.USE_CHECKPOINT and CHECKPOINT_STAGES
RECOMPUTE = {
    "nothing": [False, []],
    "every block": [True, []],
    "stem-res3": [False, ["stem", "res2", "res3"]],  # the COCO / ADE20K / Cityscapes configs' default
}
# training modes: name → (MODEL.HC.POINT_DECODING, recomputation, the clustering primitive's
# backend (None: the default, "auto"), backbone alone). "previous primitive" is the loop
# implementation of before, today the "reference" backend; "backbone alone" is the floor that
# decoding cannot go below: the backbone's forward + backward (its gradients included) on the
# same images, no head.
TRAIN_MODES = {
    "point decoding": (True, "nothing", None, False),
    "full decoding": (False, "nothing", None, False),
    "full decoding, previous primitive": (False, "nothing", "reference", False),
    "point decoding, blocked primitive": (True, "nothing", "blocked", False),
    "point decoding, unfold primitive": (True, "nothing", "unfold", False),
    "full decoding, blocked primitive": (False, "nothing", "blocked", False),
    "full decoding, unfold primitive": (False, "nothing", "unfold", False),
    "backbone alone": (True, "nothing", None, True),
    "point decoding, backbone checkpointing": (True, "every block", None, False),
    "full decoding, backbone checkpointing": (False, "every block", None, False),
    "point decoding, stem-res3 recomputed": (True, "stem-res3", None, False),
}
# a small network for --smoke: what tests/conftest.py builds
SMOKE_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.CHECKPOINT_STAGES", [],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 6,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 8, "MODEL.MASK_FORMER.DEC_LAYERS", 3,
    "MODEL.MASK_FORMER.HIDDEN_DIM", 64, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 128,
    "MODEL.SEM_SEG_HEAD.MASK_DIM", 64, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
]


def build(config: str, device: str, overrides=(), smoke: bool = False, project: str = None):
    import importlib

    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import hcformer  # noqa: F401  registers the model
    from hcformer.config import add_hcformer_config

    if project:  # its package registers its backbone and config keys
        sys.path.insert(0, os.path.join(ROOT, "projects", project))
        importlib.import_module(project.lower())

    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, "DATASETS.TRAIN", "()"]
    opts += (SMOKE_OVERRIDES if smoke else []) + list(overrides)
    cfg.merge_from_list([str(o) for o in opts])
    return build_model(cfg)


def train_step(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    losses = model(batch)
    sum(losses.values()).backward()


def timed(fn, device) -> Tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of ``fn()``. On a shared machine the
    CPU time is the steadier of the two: it does not count time spent descheduled."""
    synchronize(torch.device(device))
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(torch.device(device))
    return time.perf_counter() - start, time.process_time() - cpu


# ---------------------------------------------------------------------------- workloads
def eval_workload(args, name: str):
    """(model, function running one inference) for model ``name``."""
    config, project = EVAL_MODELS[name]
    model = build(config, args.device, smoke=args.smoke, project=project).eval()
    inputs = eval_input(*args.eval_size, args.device)

    def run():
        with torch.no_grad():
            model(inputs)

    return model, run


def train_workload(args, mode: str):
    point_decoding, recompute, backend, backbone_alone = TRAIN_MODES[mode]
    every_block, stages = RECOMPUTE[recompute]
    overrides = ["MODEL.HC.POINT_DECODING", point_decoding,
                 "MODEL.RESNETS.USE_CHECKPOINT", every_block, "MODEL.RESNETS.CHECKPOINT_STAGES", stages]
    if recompute != "nothing" and args.smoke:
        overrides += ["MODEL.RESNETS.NORM", "FrozenBN"]  # the smoke model's BN cannot be recomputed
    model = build(TRAIN_CONFIG, args.device, overrides, smoke=args.smoke).train()
    num_classes = model.sem_seg_head.predictor.class_embed.out_features - 1
    batch = synthetic_batch(args.train_size, args.batch, args.segments, num_classes, args.device)

    images = torch.stack([(s["image"] - model.pixel_mean) / model.pixel_std for s in batch])

    def run():
        with use_backend(backend or "auto"):
            if backbone_alone:
                model.zero_grad(set_to_none=True)
                features = model.backbone(images)
                sum(v.sum() for k, v in features.items() if k.startswith("res")).backward()
            else:
                train_step(model, batch)

    return model, run


def measure_memory_worker(args) -> None:
    """Child process: peak memory of each workload, one after the other, as JSON on the last
    line of stdout. Each workload is built, warmed up and freed before the next."""
    kind, *keys = args.worker
    device = torch.device(args.device)
    peaks = {}
    for key in keys:
        model, run = eval_workload(args, key) if kind == "eval" else train_workload(args, key)
        run()  # warm-up: lazily built state, first-call allocations
        with PeakMemory(device) as peak:
            run()
        peaks[key] = peak.peak
        del model, run
    print(json.dumps(peaks))


def memory_in_child(args, kind: str, keys: List[str]) -> Dict[str, int]:
    """Peak bytes of each workload, measured in a child process (see the module docstring)."""
    argv = [
        "--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch),
        "--eval-size", "x".join(map(str, args.eval_size)), "--train-size", str(args.train_size),
        "--segments", str(args.segments), "--worker", kind, *keys,
    ] + ["--smoke"] * args.smoke
    command = [sys.executable, os.path.abspath(__file__), *argv]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved(workloads: Dict[str, object], repeats: int, device: str) -> Dict[str, Dict[str, List[float]]]:
    """{name: {"wall": [s, ...], "cpu": [s, ...]}} of each workload per round; every round runs
    them all, in alternating order (a workload's place in the round should not favour it)."""
    for run in workloads.values():
        run()  # warm-up
    times = {name: {"wall": [], "cpu": []} for name in workloads}
    names = list(workloads)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            wall, cpu = timed(workloads[name], device)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return times


def median_ratio(times, name: str, ref: str, key: str) -> float:
    return statistics.median(times[name][key]) / statistics.median(times[ref][key])


# ---------------------------------------------------------------------------- main
def parse_size(text: str):
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument("--eval-size", type=parse_size, default=(800, 1216), metavar="HxW")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2, help="training batch")
    parser.add_argument("--segments", type=int, default=12, help="ground-truth segments per training image")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of inference")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed rounds of training steps")
    parser.add_argument("--train-modes", nargs="+", default=list(TRAIN_MODES), choices=list(TRAIN_MODES),
                        metavar="MODE", help=f"training modes to run (default: all): {list(TRAIN_MODES)}")
    parser.add_argument("--models", nargs="+", default=DEFAULT_EVAL_MODELS, choices=list(EVAL_MODELS))
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and inputs: seconds")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.eval_size, args.train_size, args.segments, args.repeats, args.train_repeats = (64, 96), 64, 3, 1, 1
        args.models = ["HCFormer R50 level 3"]
    if args.worker:
        measure_memory_worker(args)
        return
    info = machine_info(torch.device(args.device), args.threads)
    print(f"# {info['cpu']} ({info['cores']} cores), torch {info['torch']}, {args.threads} thread(s), "
          f"{args.device}, {info['date']}, random weights{' (smoke model)' if args.smoke else ''}")
    results = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "worker"}}

    if not args.skip_eval:
        workloads = {name: eval_workload(args, name)[1] for name in args.models}
        times = interleaved(workloads, args.repeats, args.device)
        rows = []
        print(f"\n## inference, {args.eval_size[0]}x{args.eval_size[1]}, batch 1\n")
        print("| model | latency ms | × level 3 | CPU s | × level 3 | peak MiB |")
        print("|---|---|---|---|---|---|")
        ref = "HCFormer R50 level 3" if "HCFormer R50 level 3" in times else args.models[0]
        peaks = {} if args.no_memory else memory_in_child(args, "eval", args.models)
        for name in args.models:
            row = {"model": name, "config": EVAL_MODELS[name][0], "latency_ms": 1e3 * statistics.median(times[name]["wall"])}
            row["cpu_s"] = statistics.median(times[name]["cpu"])
            row["times"] = times[name]
            row["relative"] = median_ratio(times, name, ref, "wall")
            row["relative_cpu"] = median_ratio(times, name, ref, "cpu")
            if peaks:
                row["peak_bytes"] = peaks[name]
            rows.append(row)
            peak = f"{row['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in row else "-"
            print(f"| {name} | {row['latency_ms']:.0f} | {row['relative']:.2f} | {row['cpu_s']:.2f} | "
                  f"{row['relative_cpu']:.2f} | {peak} |", flush=True)
        results["eval"] = rows

    if not args.skip_train:
        # every mode is timed against full decoding with the same checkpointing setting
        references = {"full decoding, backbone checkpointing" if TRAIN_MODES[m][1] == "every block" else "full decoding"
                      for m in args.train_modes}
        modes = [m for m in TRAIN_MODES if m in args.train_modes or m in references]
        workloads = {name: train_workload(args, name)[1] for name in modes}
        times = interleaved(workloads, args.train_repeats, args.device)
        rows = []
        print(f"\n## training step, batch {args.batch}, {args.train_size}x{args.train_size}, "
              f"{args.segments} segments per image\n")
        # "× full": against full decoding with the same block-by-block checkpointing setting
        print("| decoding | step ms | × full | CPU s | × full | peak MiB | × full |")
        print("|---|---|---|---|---|---|---|")
        peaks = {} if args.no_memory else memory_in_child(args, "train", modes)
        for name in modes:
            ref = "full decoding, backbone checkpointing" if TRAIN_MODES[name][1] == "every block" else "full decoding"
            row = {"mode": name, "reference": ref, "step_ms": 1e3 * statistics.median(times[name]["wall"]),
                   "times": times[name]}
            row["cpu_s"] = statistics.median(times[name]["cpu"])
            row["relative_time"] = median_ratio(times, name, ref, "wall")
            row["relative_cpu"] = median_ratio(times, name, ref, "cpu")
            if peaks:
                row["peak_bytes"] = peaks[name]
                row["relative_peak"] = peaks[name] / peaks[ref]
            rows.append(row)
            mem = f"{row['peak_bytes'] / 2**20:.0f} | {row['relative_peak']:.2f}" if peaks else "- | -"
            print(f"| {name} | {row['step_ms']:.0f} | {row['relative_time']:.2f} | {row['cpu_s']:.1f} | "
                  f"{row['relative_cpu']:.2f} | {mem} |", flush=True)
        results["train"] = rows

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

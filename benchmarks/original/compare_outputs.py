"""Outputs of this project against the original HCFormer's, for any config both have.

    python benchmarks/original/compare_outputs.py --original /path/to/HCFormer-checkout \
        [--device cuda] [--time 800x1216 --repeats 20 --rounds 2] CONFIG [CONFIG ...]

CONFIG is a path under configs/ (e.g. ``coco/panoptic-segmentation/hcformer+_R50_bs16_100ep.yaml``);
the original's config of the same path is used on its side. Each side runs in its own process
(both packages are called ``hcformer``), builds the model on the CPU, fills its own state dict
with the formula weights of tests/original_reference.py (a function of key and shape only),
runs the 256×384 reference image and saves its outputs; this process compares them: the
state-dict layouts, ``sem_seg`` (max |difference| and pixels whose argmax differs), the
panoptic map and segments, the instances (scores, classes, mask areas). The reference image runs
in fp32 (TF32 off on a GPU).

``--time HxW`` also times inference (all of the config's outputs, batch 1, a random image of
that size, TF32 as torch's defaults have it) in each side's child after its outputs: ``--rounds``
children per side, alternating, each ``--repeats`` timed runs after three untimed ones; the
ratio of the medians, and on a GPU the peak memory allocated. ``--train-time S`` times training
steps the same way: batch 2 of S×S synthetic images with 12 rectangles each
(benchmarks/synthetic_inputs.py), forward + backward + ``torch.optim.AdamW`` (the same optimizer
on both sides), every activation kept on both (this project's configs recompute stem–res3 in
backward; the original recomputes nothing), each side's own point sampling.

The original is run as it is, with three stand-ins this machine needs (facts of its code, not
changes of its computation): ``turtle``, which it imports but never uses, is an empty module;
detectron2's CUDA-only ``ModulatedDeformConv`` is ``torchvision.ops.deform_conv2d`` with the
same parameters (equal to < 1e-6); torchvision's ResNets are built without downloading weights
(the formula weights replace them anyway). Nothing of the original is copied here.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]


def build_original(checkout: Path, config: str):
    """The original's model for its ``configs/<config>``, built with the stand-ins above."""
    sys.modules["turtle"] = types.ModuleType("turtle")
    sys.modules["turtle"].down = None
    import detectron2.layers
    import torchvision.models
    from torchvision.ops import deform_conv2d

    class TorchvisionModulatedDeformConv(torch.nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, **unused):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
            self.bias = torch.nn.Parameter(torch.zeros(out_channels))
            self.stride, self.padding = stride, padding

        def forward(self, x, offset, mask):
            return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                 mask=mask)

    detectron2.layers.ModulatedDeformConv = TorchvisionModulatedDeformConv
    for depth in (18, 34, 50, 101, 152):
        build = getattr(torchvision.models, f"resnet{depth}")
        setattr(torchvision.models, f"resnet{depth}",
                lambda pretrained=False, _build=build, **kwargs: _build(weights=None, **kwargs))
    sys.path.insert(0, str(checkout))
    import hcformer as original
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    original.add_maskformer2_config(cfg)
    original.add_hcformer_config(cfg)
    cfg.merge_from_file(str(checkout / "configs" / config))
    return cfg


def build_ours(config: str):
    sys.path.insert(0, str(ROOT))
    from detectron2.config import get_cfg

    from hcformer.config import add_hcformer_config

    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / config))
    return cfg


def synchronize(device: str) -> None:
    # bench_local_clustering.synchronize's twin: that module imports this project's hcformer,
    # which the original's side must not
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_runs(step: Callable[[], object], device: str, untimed: int, repeats: int) -> Tuple[List[float], list]:
    """Seconds of each of ``repeats`` calls of ``step`` after ``untimed`` ones, and what every
    call returned."""
    times, returned = [], []
    for i in range(untimed + repeats):
        synchronize(device)
        start = time.perf_counter()
        returned.append(step())
        synchronize(device)
        if i >= untimed:
            times.append(time.perf_counter() - start)
    return times, returned


def time_inference(model, device: str, size: Tuple[int, int], repeats: int) -> dict:
    """Seconds of each of ``repeats`` inferences of one random image, after three untimed ones."""
    height, width = size
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    inputs = [{"image": image.round(), "height": height, "width": width}]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        times, _ = timed_runs(lambda: model(inputs), device, 3, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"seconds": times, "peak_mib": peak}


def time_training(model, device: str, size: int, repeats: int) -> dict:
    """Seconds of each of ``repeats`` training steps on one synthetic batch, after two untimed
    ones, and the first step's total loss."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synthetic_inputs import synthetic_batch

    batch = synthetic_batch(size, 2, 12, model.criterion.num_classes, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(model(batch).values())
        loss.backward()
        optimizer.step()
        return loss.item()

    times, losses = timed_runs(step, device, 2, repeats)
    return {"seconds": times, "first_loss": losses[0]}


def run_side(side: str, checkout: Path, config: str, output: Path, device: str,
             time_size: Optional[Tuple[int, int]], repeats: int, train_size: Optional[int] = None) -> None:
    """Build one side's model, fill the formula weights, run the reference image, save."""
    sys.path.insert(0, str(ROOT / "tests"))
    from original_reference import formula_state_dict, reference_image

    cfg = build_original(checkout, config) if side == "original" else build_ours(config)
    from detectron2.modeling import build_model

    cfg.MODEL.DEVICE = device
    if side == "ours" and train_size:
        cfg.MODEL.RESNETS.CHECKPOINT_STAGES = []  # keep every activation, as the original does
    model = build_model(cfg).eval()
    state = model.state_dict()
    model.load_state_dict(formula_state_dict(state))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        (out,) = model([{"image": reference_image().float(), "height": 256, "width": 384}])
    torch.backends.cudnn.allow_tf32 = tf32
    out = {k: v.to("cpu") if k != "panoptic_seg" else (v[0].cpu(), v[1]) for k, v in out.items()}
    result = {"layout": {k: list(v.shape) for k, v in state.items()}}
    if "sem_seg" in out:
        result["sem_seg"] = out["sem_seg"]
    if "panoptic_seg" in out:
        result["panoptic_seg"], result["segments_info"] = out["panoptic_seg"]
    if "instances" in out:
        instances = out["instances"]
        result["instances"] = {"scores": instances.scores, "classes": instances.pred_classes,
                               "areas": instances.pred_masks.flatten(1).sum(1)}
    if time_size:
        result["timing"] = time_inference(model, device, time_size, repeats)
    if train_size:
        result["training"] = time_training(model, device, train_size, repeats)
    torch.save(result, output)


def compare(original: dict, ours: dict) -> dict:
    report = {
        "missing": sorted(set(original["layout"]) - set(ours["layout"])),
        "unexpected": sorted(set(ours["layout"]) - set(original["layout"])),
        "shape_mismatch": sorted(k for k in set(original["layout"]) & set(ours["layout"])
                                 if original["layout"][k] != ours["layout"][k]),
    }
    if "sem_seg" in original:
        a, b = ours["sem_seg"], original["sem_seg"]
        report["sem_seg_max_abs_diff"] = float((a - b).abs().max())
        report["sem_seg_argmax_pixels_differing"] = int((a.argmax(0) != b.argmax(0)).sum())
    if "panoptic_seg" in original:
        report["panoptic_equal"] = bool(torch.equal(ours["panoptic_seg"].int(), original["panoptic_seg"].int())
                                        and ours["segments_info"] == original["segments_info"])
    if "instances" in original:
        a, b = ours["instances"], original["instances"]
        same_count = len(a["scores"]) == len(b["scores"])
        report["instances"] = {
            "count": [len(a["scores"]), len(b["scores"])],
            "score_max_abs_diff": float((a["scores"] - b["scores"]).abs().max()) if same_count and len(a["scores"]) else 0.0,
            "classes_equal": same_count and bool(torch.equal(a["classes"], b["classes"])),
            "areas_equal": same_count and bool(torch.equal(a["areas"].float(), b["areas"].float())),
        }
    return report


def timing_report(runs: Dict[str, List[dict]]) -> dict:
    """Median seconds per side over all of its children's runs, the ratio, and what else the
    runs hold: peak memory (the largest), the first training step's loss (each child's)."""
    median = {side: statistics.median(t for run in side_runs for t in run["seconds"]) for side, side_runs in runs.items()}
    report = {"median_ms": {side: round(1000 * m, 2) for side, m in median.items()},
              "original_over_ours": round(median["original"] / median["ours"], 3)}
    if runs["ours"][0].get("peak_mib") is not None:
        report["peak_mib"] = {side: round(max(run["peak_mib"] for run in side_runs)) for side, side_runs in runs.items()}
    if "first_loss" in runs["ours"][0]:
        report["first_loss"] = {side: [round(run["first_loss"], 3) for run in side_runs] for side, side_runs in runs.items()}
    return report


def parse_size(text: str) -> Tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="a checkout of DensoITLab/HCFormer")
    parser.add_argument("--device", default="cpu", help="where both sides run: cpu, cuda")
    parser.add_argument("--time", type=parse_size, metavar="HxW", help="also time inference at this image size")
    parser.add_argument("--repeats", type=int, default=20, help="timed inferences per child")
    parser.add_argument("--rounds", type=int, default=2, help="children per side, alternating")
    parser.add_argument("--train-time", type=int, metavar="S", help="also time training steps on S×S images")
    parser.add_argument("--side", choices=["original", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("configs", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.side:
        run_side(args.side, args.original.resolve(), args.configs[0], args.output, args.device, args.time,
                 args.repeats, args.train_time)
        return
    timed = {"timing": "inference", "training": "training"}
    rounds = args.rounds if args.time or args.train_time else 1
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            results, timings = {}, {key: {"original": [], "ours": []} for key in timed}
            for _ in range(rounds):
                for side in ("original", "ours"):
                    output = Path(tmp) / f"{side}.pt"
                    command = [sys.executable, __file__, "--original", str(args.original), "--side", side,
                               "--output", str(output), "--device", args.device, "--repeats", str(args.repeats), config]
                    if args.time:
                        command += ["--time", "x".join(map(str, args.time))]
                    if args.train_time:
                        command += ["--train-time", str(args.train_time)]
                    child = subprocess.run(command, stderr=subprocess.PIPE, text=True)
                    if child.returncode != 0:
                        raise SystemExit(f"the {side} side failed on {config}:\n{child.stderr[-3000:]}")
                    results[side] = torch.load(output, weights_only=False)
                    for key in timed:
                        if key in results[side]:
                            timings[key][side].append(results[side][key])
            report = {"config": config, "device": args.device, **compare(results["original"], results["ours"])}
            if args.time:
                report["inference"] = {"size": list(args.time), **timing_report(timings["timing"])}
            if args.train_time:
                report["training"] = {"size": [args.train_time] * 2, "batch": 2, **timing_report(timings["training"])}
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

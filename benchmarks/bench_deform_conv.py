#!/usr/bin/env python
"""DCNv2 backends (hcformer/layers/deform_conv.py) at the six deformable convolutions of an
HCFormer ResNet-50: the strided 3×3 conv and the 1×1 shortcut of the first block of res3, res4
and res5, at the feature sizes of inference (batch 1, 800×1216 image) or of the training
benchmark (batch 2, 512² images).

Per shape and backend: forward without autograd, and forward + backward (all of input,
offsets, modulation, weights and bias need gradients). Offsets are random (std 2 pixels, so
some taps fall outside the image), modulation uniform in [0, 1]. Times are medians of
interleaved repetitions (each round runs every backend once); the largest difference of the
output and of the gradients from torchvision's, relative to the largest magnitude of each,
is reported next to them.

    python benchmarks/bench_deform_conv.py                       # inference shapes, 2 threads
    python benchmarks/bench_deform_conv.py --train --threads 1
    python benchmarks/bench_deform_conv.py --smoke               # tiny shapes, seconds
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_local_clustering import machine_info, synchronize  # noqa: E402

from hcformer.layers.deform_conv import modulated_deform_conv2d, use_backend  # noqa: E402

BACKENDS = ("torchvision", "sampled", "bag")


def resnet50_shapes(height: int, width: int) -> List[Tuple[str, int, int, int, int, int]]:
    """(name, C_in, C_out, kernel, H, W) of the inputs of the deformable convs (stride 2)."""
    h, w = height // 4, width // 4  # res2
    shapes = []
    for stage, (c_mid, c_in, c_out) in zip((3, 4, 5), ((128, 256, 512), (256, 512, 1024), (512, 1024, 2048))):
        shapes.append((f"res{stage} 3x3", c_mid, c_mid, 3, h, w))
        shapes.append((f"res{stage} shortcut 1x1", c_in, c_out, 1, h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return shapes


def make_inputs(batch: int, c_in: int, c_out: int, kernel: int, h: int, w: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pad = kernel // 2
    ho, wo = (h + 2 * pad - kernel) // 2 + 1, (w + 2 * pad - kernel) // 2 + 1
    K = kernel * kernel
    x = torch.randn(batch, c_in, h, w, generator=g)
    offset = torch.randn(batch, 2 * K, ho, wo, generator=g) * 2
    mask = torch.rand(batch, K, ho, wo, generator=g)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=g) / (c_in * K) ** 0.5
    bias = torch.randn(c_out, generator=g)
    return [t.to(device) for t in (x, offset, mask, weight, bias)], pad


def run(backend: str, inputs, pad: int, backward: bool):
    with use_backend(backend):
        if not backward:
            with torch.no_grad():
                return modulated_deform_conv2d(*inputs, stride=2, padding=pad), None
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = modulated_deform_conv2d(*leaves, stride=2, padding=pad)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        return out.detach(), grads


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def bench_shape(shape, args, device) -> Dict[str, object]:
    name, c_in, c_out, kernel, h, w = shape
    inputs, pad = make_inputs(args.batch, c_in, c_out, kernel, h, w, device)
    ref_out, ref_grads = run("torchvision", inputs, pad, backward=True)
    row: Dict[str, object] = {"shape": name, "input": [args.batch, c_in, h, w], "out_channels": c_out, "kernel": kernel}
    for backend in BACKENDS[1:]:
        out, grads = run(backend, inputs, pad, backward=True)
        # relative to the largest magnitude of each tensor: the weight gradient sums over all pixels
        row[f"{backend}_max_rel_diff"] = max(
            ((a - b).abs().max() / b.abs().max()).item() for a, b in zip((out, *grads), (ref_out, *ref_grads))
        )
    times: Dict[str, List[float]] = {f"{b} {d}": [] for b in BACKENDS for d in ("forward", "forward_backward")}
    for r in range(args.repeats):
        order = BACKENDS if r % 2 == 0 else tuple(reversed(BACKENDS))
        for backend in order:
            times[f"{backend} forward"].append(timed(lambda: run(backend, inputs, pad, False), device))
            times[f"{backend} forward_backward"].append(timed(lambda: run(backend, inputs, pad, True), device))
    for key, values in times.items():
        row[key.replace(" ", "_") + "_ms"] = 1e3 * statistics.median(values)
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help="the training benchmark's shapes: batch 2, 512² images")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="image size (default 800 1216, or 512 512 with --train)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="a 64×64 image, one repeat")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.size is None:
        args.size = (512, 512) if args.train else (800, 1216)
    if args.batch is None:
        args.batch = 2 if args.train else 1
    if args.smoke:
        args.size, args.repeats = (64, 64), 1
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench_shape(s, args, device) for s in resnet50_shapes(*args.size)]
    print(f"## DCNv2, batch {args.batch}, image {args.size[0]}x{args.size[1]}, {args.threads} threads, {device}")
    print("| shape | input | torchvision fwd / fwd+bwd ms | sampled ×tv | bag ×tv | max rel. diff sampled / bag |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        tv_f, tv_b = r["torchvision_forward_ms"], r["torchvision_forward_backward_ms"]
        cells = [f"{r[f'{b}_forward_ms'] / tv_f:.2f} / {r[f'{b}_forward_backward_ms'] / tv_b:.2f}" for b in ("sampled", "bag")]
        print(f"| {r['shape']} | {'×'.join(map(str, r['input']))} | {tv_f:.0f} / {tv_b:.0f} | {cells[0]} | {cells[1]} "
              f"| {r['sampled_max_rel_diff']:.1e} / {r['bag_max_rel_diff']:.1e} |")
    totals = {k: sum(r[k] for r in rows) for k in rows[0] if k.endswith("_ms")}
    print("| all six | | {:.0f} / {:.0f} | {:.2f} / {:.2f} | {:.2f} / {:.2f} | |".format(
        totals["torchvision_forward_ms"], totals["torchvision_forward_backward_ms"],
        *[totals[f"{b}_{d}_ms"] / totals[f"torchvision_{d}_ms"] for b in ("sampled", "bag") for d in ("forward", "forward_backward")]))
    result = {"machine": machine_info(device, args.threads), "args": vars(args), "rows": rows, "totals_ms": totals}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

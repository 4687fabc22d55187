#!/usr/bin/env python
"""CPU latency of an exported HCFormer: eager PyTorch vs TorchScript vs onnxruntime, same run.

For each size, the config's model (random weights, seeded) is exported with
tools/export_model.py's library function to ONNX and TorchScript at that fixed size, then the
three run the same graph (image → pred_logits, pred_masks, sem_seg; hcformer.modeling.export_graph)
on one image, in rounds that run each of them once, in rotating order, so that machine load
hits all three alike. Eager runs the model's default backends (blocked clustering, the CPU
DCNv2 backend); the exports hold the reference clustering and DCNv2 as one operator
(TorchScript: torchvision's kernel, ONNX: DeformConv). Median latency per implementation, the
model files' sizes, and the largest difference of each export's outputs to eager's. Each of
the three runs in a process of its own (see ``_worker``); the rounds still alternate between
them.

    python benchmarks/bench_export.py                                   # COCO R50 panoptic, 800x1216 and 512x512
    python benchmarks/bench_export.py --sizes 512x512 --rounds 3 --json export.json
    python benchmarks/bench_export.py --config-file FILE --sizes 512x512 MODEL.CAST.SUPERPIXEL.METHOD SLIC  # config overrides last
"""
import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_local_clustering import machine_info  # noqa: E402

import hcformer  # noqa: E402,F401
from hcformer.engine.export import export_model  # noqa: E402
from hcformer.engine.inference_model import build_inference_model, inference_cfg  # noqa: E402
from hcformer.modeling.export_graph import ExportGraph  # noqa: E402
from hcformer_deploy.exported_model import ExportedModel  # noqa: E402

DEFAULT_CONFIG = "configs/coco/panoptic-segmentation/hcformer_R50_bs16_50ep.yaml"


def parse_size(text: str):
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def _worker(kind: str, config_file: str, opts: List[str], directory: str, size, threads: int, conn) -> None:
    """One implementation in a process of its own: build it, then time one run per request.

    Separate processes, so that no runtime's thread pool or allocator state acts on another's
    runs (in one process, the eager graph was measured 3–7× slower once an onnxruntime session
    existed, on a loaded machine; not separated from the load).
    """
    torch.set_num_threads(threads)
    height, width = size
    image = (torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(1)) * 255).numpy()
    if kind == "eager":
        cfg = inference_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
        torch.manual_seed(0)
        graph = ExportGraph(build_inference_model(cfg), cfg.INPUT.FORMAT).eval()

        def run():
            with torch.no_grad():
                graph(torch.from_numpy(image))
    else:
        exported = ExportedModel(directory, num_threads=threads)

        def run():
            exported.run_graph(image)
    run()  # warm-up: first-call allocations, TorchScript's profiling runs
    conn.send("ready")
    while conn.recv() == "run":
        start = time.perf_counter()
        run()
        conn.send(time.perf_counter() - start)


def _differences(cfg, directories: Dict[str, str], size, threads: int) -> Dict[str, float]:
    """Largest difference of each export's outputs to the eager graph's, on the benchmark image."""
    height, width = size
    image = (torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(1)) * 255).numpy()
    torch.manual_seed(0)
    graph = ExportGraph(build_inference_model(cfg), cfg.INPUT.FORMAT).eval()
    with torch.no_grad():
        reference = dict(zip(("pred_logits", "pred_masks", "sem_seg"), graph(torch.from_numpy(image))))
    differences = {}
    for fmt, directory in directories.items():
        outputs = ExportedModel(directory, num_threads=threads).run_graph(image)
        differences[fmt] = max(float((outputs[key] - reference[key]).abs().max()) for key in reference)
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(800, 1216), (512, 512)], metavar="HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    config_file = os.path.join(ROOT, args.config_file)
    context = multiprocessing.get_context("spawn")

    results: List[Dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in args.sizes:
            cfg = inference_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *args.opts])
            directories, sizes = {}, {}
            for fmt in ("torchscript", "onnx"):
                directories[fmt] = os.path.join(tmp, f"{fmt}_{height}x{width}")
                torch.manual_seed(0)
                start = time.perf_counter()
                info = export_model(cfg, fmt, directories[fmt], height, width, config_file=args.config_file)
                logging.info("%s export at %dx%d: %.0f s", fmt, height, width, time.perf_counter() - start)
                sizes[fmt] = os.path.getsize(os.path.join(directories[fmt], info["model_file"]))
            differences = _differences(cfg, directories, (height, width), args.threads)

            workers = {}
            for kind in ("eager", "torchscript", "onnx"):
                parent, child = context.Pipe()
                process = context.Process(target=_worker, args=(
                    kind, config_file, args.opts, directories.get(kind, ""), (height, width), args.threads, child))
                process.start()
                workers[kind] = (process, parent)
            for process, conn in workers.values():
                assert conn.recv() == "ready"
            names = list(workers)
            times: Dict[str, List[float]] = {name: [] for name in names}
            for r in range(args.rounds):
                # one at a time, in rotating order: the others wait on their pipes
                for name in names[r % len(names):] + names[: r % len(names)]:
                    workers[name][1].send("run")
                    times[name].append(workers[name][1].recv())
                logging.info("round %d/%d at %dx%d: %s", r + 1, args.rounds, height, width,
                             ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
            for process, conn in workers.values():
                conn.send("stop")
                process.join()
            medians = {name: statistics.median(t) for name, t in times.items()}
            results.append({"size": f"{height}x{width}", "median_s": medians, "times_s": times,
                            "file_bytes": sizes, "max_abs_difference": differences})

    print(f"\n{args.config_file}, random weights, batch 1, {args.threads} threads, median of {args.rounds} rounds\n")
    print("| input | eager | TorchScript | onnxruntime | TorchScript / eager | onnxruntime / eager | max diff TS / ORT |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        m, d = r["median_s"], r["max_abs_difference"]
        print(f"| {r['size']} | {m['eager']:.2f} s | {m['torchscript']:.2f} s | {m['onnx']:.2f} s | "
              f"{m['torchscript'] / m['eager']:.2f}× | {m['onnx'] / m['eager']:.2f}× | "
              f"{d['torchscript']:.1g} / {d['onnx']:.1g} |")
    print("\n| file | size |\n|---|---|")
    for fmt, size in results[0]["file_bytes"].items():
        print(f"| {'model.ts' if fmt == 'torchscript' else 'model.onnx'} | {size / 2**20:.1f} MiB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(torch.device("cpu"), args.threads), "args": vars(args), "results": results}, f, indent=2, default=str)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""This working tree against another checkout of the project (a baseline commit), in one run:
inference latency and a training step, and whether both compute the same thing.

    git worktree add /tmp/hcformer_3e2978d 3e2978d        # outside the repository
    python benchmarks/bench_vs_commit.py --baseline /tmp/hcformer_3e2978d [--quick] [--json FILE]

Every measurement runs in a child process that imports ``hcformer`` from one of the two trees
(the working directory and ``PYTHONPATH`` set to it; the child imports that tree's
benchmarks/bench_model.py helpers, the same functions in both). Children of the two trees alternate (baseline, this tree,
this tree, baseline, ...), each builds its model, loads the same random weights (made once by the
baseline, saved to a state dict), runs one warm-up and then the timed repetitions; the reported
times are medians over all repetitions of a tree, the ratio is this tree's / the baseline's.

- inference: batch 1, 800×1216 random image, all the config's outputs (COCO panoptic:
  semantic, instance and panoptic), R50 at 1 and 2 threads, HCFormer+ R50 and Swin-S at 2;
  peak memory as in bench_model.py (resident set above the size before the call, glibc told to
  return freed memory to the system), in one more child per tree that is not timed.
- training step: the R50 COCO panoptic config, batch 2 of 512² synthetic images (bench_model's
  ``synthetic_batch``), forward + backward + AdamW step; time and peak resident memory.
- allocator: each child first sets malloc up as its tree's entry points do (``--allocator
  entry-point``, the default: ``hcformer.engine.cpu_allocator`` where the tree has it, glibc's
  defaults in trees from before it), or leaves glibc's defaults in both (``--allocator glibc``).
  The memory children override it (they set glibc's mmap threshold themselves).
- ``--train-overrides KEY VALUE ...``: config overrides of the training children of both trees;
  ``--head-overrides``: of this tree's only, e.g. ``MODEL.RESNETS.USE_CHECKPOINT True`` to measure
  what recomputation trades against the baseline's default.
- outputs: the first child of each tree saves its outputs (inference: ``sem_seg``, the panoptic
  map and segments, the instances; training: the losses of the first step and the gradients of
  every parameter), and the two are compared: ``sem_seg`` within 1e-5, the panoptic map and
  segments equal, instances equal (masks and classes; scores within 1e-5); the losses' largest
  difference and the gradients' relative differences (``compare_train``).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PANOPTIC = "configs/coco/panoptic-segmentation"
MODELS = {
    "HCFormer R50": f"{PANOPTIC}/hcformer_R50_bs16_50ep.yaml",
    "HCFormer+ R50": f"{PANOPTIC}/hcformer+_R50_bs16_100ep.yaml",
    "HCFormer Swin-S": f"{PANOPTIC}/swin/hcformer_swin_small_bs16_50ep.yaml",
}
TRAIN_MODEL = "HCFormer R50"
# (row name, model, threads) of the inference table
EVAL_ROWS = [("HCFormer R50", 1), ("HCFormer R50", 2), ("HCFormer+ R50", 2), ("HCFormer Swin-S", 2)]


# ---------------------------------------------------------------------------- child process
def worker(args) -> None:
    """Runs in a child whose ``hcformer`` is the tree under test (the first entry of sys.path)."""
    import torch

    # the helpers of the tree under test (bench_model's build, eval_input and synthetic_batch are
    # the same in 3e2978d and later), which import that tree's hcformer
    tree = os.getcwd()
    sys.path.insert(0, os.path.join(tree, "benchmarks"))
    from bench_local_clustering import PeakMemory
    from bench_model import build, eval_input, synthetic_batch

    import hcformer

    if args.allocator == "entry-point":
        try:
            from hcformer.engine.cpu_allocator import keep_freed_memory
        except ImportError:  # a tree from before it: its entry points left glibc's defaults
            pass
        else:
            keep_freed_memory()
    assert os.path.dirname(os.path.dirname(os.path.abspath(hcformer.__file__))) == tree, hcformer.__file__
    torch.set_num_threads(args.threads)
    train = args.kind == "train"
    torch.manual_seed(0)
    overrides = (["MODEL.HC.POINT_DECODING", True] if train else []) + args.overrides
    model = build(MODELS[args.model], "cpu", overrides).train(train)
    if not os.path.exists(args.weights):  # the first child's initialisation, for both trees
        torch.save(model.state_dict(), args.weights)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    result: Dict[str, object] = {"tree": tree, "times": [], "cpu_times": []}

    if train:
        num_classes = model.sem_seg_head.predictor.class_embed.out_features - 1
        batch = synthetic_batch(512, 2, 12, num_classes, "cpu")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)

        def run():
            torch.manual_seed(1)  # the criterion's point sampling
            optimizer.zero_grad(set_to_none=True)
            losses = model(batch)
            sum(losses.values()).backward()
            optimizer.step()
            return losses
    else:
        inputs = eval_input(800, 1216, "cpu")

        def run():
            with torch.no_grad():
                return model(inputs)

    if args.save:  # outputs first, on the weights as loaded; this run is also the warm-up
        if train:
            torch.manual_seed(1)
            losses = model(batch)
            sum(losses.values()).backward()
            saved = {"losses": {k: v.detach() for k, v in losses.items()},
                     "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
            model.zero_grad(set_to_none=True)
        else:
            out = run()[0]
            saved = {"sem_seg": out["sem_seg"], "panoptic_seg": out["panoptic_seg"][0],
                     "segments_info": out["panoptic_seg"][1],
                     "instances": {k: v for k, v in out["instances"].get_fields().items() if k != "pred_boxes"}}
        torch.save(saved, args.save)
        model.load_state_dict(torch.load(args.weights, weights_only=True))
    else:
        run()  # warm-up
    for _ in range(args.repeats):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        result["times"].append(time.perf_counter() - start)
        result["cpu_times"].append(time.process_time() - cpu)
    if args.memory:
        with PeakMemory(torch.device("cpu")) as peak:
            run()
        result["peak_bytes"] = peak.peak
    print(json.dumps(result))


# ---------------------------------------------------------------------------- parent process
def run_child(tree: str, kind: str, model: str, threads: int, repeats: int, weights: str, save: str = None,
              memory: bool = False, allocator: str = "entry-point", overrides: List[str] = ()) -> Dict[str, object]:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--kind", kind, "--model", model,
            "--threads", str(threads), "--repeats", str(repeats), "--weights", weights, "--allocator", allocator]
    argv += ["--overrides", *overrides] if overrides else []
    argv += ["--save", save] if save else []
    argv += ["--memory"] if memory else []
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS=str(threads))
    if memory:  # glibc returns freed tensors to the system, so that the resident size follows the live
        # tensors; it makes every large allocation fault in fresh pages, so such a child is not timed
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child ({tree}, {kind}, {model}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_eval(a: str, b: str) -> Dict[str, object]:
    import torch

    base, head = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    bi, hi = base["instances"], head["instances"]
    same_instances = bi.keys() == hi.keys() and all(
        bi[k].shape == hi[k].shape and (torch.equal(bi[k], hi[k]) if k != "scores" else
                                        bool(((bi[k] - hi[k]).abs() <= 1e-5).all()))
        for k in bi)
    return {
        "sem_seg_max_abs_diff": (base["sem_seg"] - head["sem_seg"]).abs().max().item(),
        "panoptic_map_equal": torch.equal(base["panoptic_seg"], head["panoptic_seg"]),
        "segments_equal": base["segments_info"] == head["segments_info"],
        "segments": len(head["segments_info"]),
        "instances_equal": same_instances,
        "instances": len(hi["scores"]),
    }


def compare_train(a: str, b: str) -> Dict[str, object]:
    """Losses: largest absolute difference. Gradients: ‖Δg‖ / ‖g‖ per parameter (its median and
    its largest, with the parameter's name) and over all parameters together. A relative
    difference per element would mostly measure cancellation: a parameter whose gradient is a
    sum of many terms of both signs (an offset conv's, at zero offsets) keeps the rounding of
    the terms, which can be 10³ times its own size."""
    import torch

    base, head = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    same_keys = base["losses"].keys() == head["losses"].keys() and base["grads"].keys() == head["grads"].keys()
    loss_diff = max((base["losses"][k] - head["losses"][k]).abs().item() for k in base["losses"])
    diff = {n: (base["grads"][n] - head["grads"][n]).norm().item() for n in base["grads"]}
    norm = {n: base["grads"][n].norm().item() for n in base["grads"]}
    relative = {n: diff[n] / max(norm[n], 1e-30) for n in diff}
    worst = max(relative, key=relative.get)
    total = (sum(d * d for d in diff.values()) / sum(g * g for g in norm.values())) ** 0.5
    return {"same_keys": same_keys, "loss_max_abs_diff": loss_diff, "grad_total_rel_diff": total,
            "grad_median_rel_diff": statistics.median(relative.values()),
            "grad_max_rel_diff": relative[worst], "grad_worst_parameter": worst}


def measure(args, kind: str, model: str, threads: int, workdir: str) -> Dict[str, object]:
    """Alternating children of the two trees; outputs saved by the first of each."""
    weights = os.path.join(workdir, f"{model.replace(' ', '_')}.pth")
    trees = {"baseline": args.baseline, "head": ROOT}
    runs: Dict[str, List[Dict]] = {"baseline": [], "head": []}
    saves = {name: os.path.join(workdir, f"{kind}_{model.replace(' ', '_')}_{threads}_{name}.pt") for name in trees}
    order = []
    for r in range(args.rounds):
        order += ["baseline", "head"] if r % 2 == 0 else ["head", "baseline"]
    peaks = {}
    both = args.train_overrides if kind == "train" else []
    overrides = {"baseline": both, "head": both + (args.head_overrides if kind == "train" else [])}
    for i, name in enumerate(order):
        first = not runs[name]
        runs[name].append(run_child(trees[name], kind, model, threads, args.repeats, weights,
                                    save=saves[name] if first and args.check else None,
                                    allocator=args.allocator, overrides=overrides[name]))
    if not args.no_memory:
        for name in trees:
            peaks[name] = run_child(trees[name], kind, model, threads, 0, weights, memory=True,
                                    overrides=overrides[name])["peak_bytes"]
    row: Dict[str, object] = {"kind": kind, "model": model, "threads": threads, "overrides": overrides,
                              "allocator": args.allocator}
    for name in trees:
        row[f"{name}_s"] = statistics.median(t for run in runs[name] for t in run["times"])
        row[f"{name}_cpu_s"] = statistics.median(t for run in runs[name] for t in run["cpu_times"])
        row[f"{name}_times"] = [run["times"] for run in runs[name]]
        if not args.no_memory:
            row[f"{name}_peak_bytes"] = peaks[name]
    row["ratio"] = row["head_s"] / row["baseline_s"]
    row["cpu_ratio"] = row["head_cpu_s"] / row["baseline_cpu_s"]
    if not args.no_memory:
        row["peak_ratio"] = row["head_peak_bytes"] / row["baseline_peak_bytes"]
    if args.check:
        row["same"] = (compare_train if kind == "train" else compare_eval)(saves["baseline"], saves["head"])
    return row


def fmt_same(row) -> str:
    s = row.get("same")
    if s is None:
        return "-"
    if row["kind"] == "train":
        return (f"losses Δ {s['loss_max_abs_diff']:.1e}; gradients ‖Δ‖/‖g‖ {s['grad_total_rel_diff']:.1e} in all, "
                f"median {s['grad_median_rel_diff']:.1e}, largest {s['grad_max_rel_diff']:.1e} ({s['grad_worst_parameter']})")
    equal = s["panoptic_map_equal"] and s["segments_equal"] and s["instances_equal"]
    return (f"sem_seg Δ {s['sem_seg_max_abs_diff']:.1e}; panoptic ({s['segments']} segments) and "
            f"instances ({s['instances']}) {'equal' if equal else 'DIFFERENT'}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="a checkout of the baseline commit (outside this repository)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 repetition: < 10 min on a quiet machine")
    p.add_argument("--rounds", type=int, default=4, help="children per tree and measurement")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions per child")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="inference rows of these models only")
    p.add_argument("--train-threads", type=int, nargs="+", default=[2], help="threads of the training step rows")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--allocator", choices=("entry-point", "glibc"), default="entry-point",
                   help="malloc as each tree's entry points set it up (default), or glibc's defaults in both")
    p.add_argument("--train-overrides", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides of both trees' training children")
    p.add_argument("--head-overrides", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides of this tree's training children only")
    p.add_argument("--no-check", dest="check", action="store_false", help="do not compare the outputs")
    p.add_argument("--json", metavar="FILE")
    # child process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("eval", "train"), help=argparse.SUPPRESS)
    p.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", nargs="+", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker and not args.baseline:
        p.error("--baseline is required")
    if args.quick:
        args.rounds, args.repeats = 2, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    sys.path.insert(0, ROOT)
    sys.path.insert(1, HERE)
    import torch

    from bench_local_clustering import machine_info

    baseline_commit = subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()
    head_commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                 capture_output=True, text=True).stdout.strip()
    info = machine_info(torch.device("cpu"), 0)
    print(f"# this tree ({head_commit}) / baseline ({baseline_commit}); {info['cpu']} ({info['cores']} cores), "
          f"torch {info['torch']}, {info['date']}; {args.rounds} children per tree × {args.repeats} repetitions")
    results = {"machine": info, "baseline": baseline_commit, "head": head_commit,
               "args": {k: v for k, v in vars(args).items() if v is not None}, "rows": []}
    rows = [] if args.skip_eval else [r for r in EVAL_ROWS if r[0] in (args.models or MODELS)]
    with tempfile.TemporaryDirectory(prefix="bench_vs_commit_") as workdir:
        if not args.skip_eval:
            print("\n## inference, 800x1216, batch 1, semantic + instance + panoptic\n")
            print("| model | threads | baseline ms | this tree ms | × | CPU × | peak MiB baseline / this | × | outputs |")
            print("|---|---|---|---|---|---|---|---|---|")
        for model, threads in rows:
            row = measure(args, "eval", model, threads, workdir)
            results["rows"].append(row)
            print_row(row, args)
        if not args.skip_train:
            print("\n## training step, batch 2, 512x512, forward + backward + AdamW\n")
            print("| model | threads | baseline ms | this tree ms | × | CPU × | peak MiB baseline / this | × | same |")
            print("|---|---|---|---|---|---|---|---|---|")
            for threads in args.train_threads:
                row = measure(args, "train", TRAIN_MODEL, threads, workdir)
                results["rows"].append(row)
                print_row(row, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def print_row(row, args) -> None:
    mem = "- | -" if args.no_memory else (
        f"{row['baseline_peak_bytes'] / 2**20:.0f} / {row['head_peak_bytes'] / 2**20:.0f} | {row['peak_ratio']:.2f}")
    baseline, head = row["overrides"]["baseline"], row["overrides"]["head"]
    model = row["model"] + (f" ({' '.join(baseline)} / {' '.join(head)})" if baseline or head else "")
    print(f"| {model} | {row['threads']} | {1e3 * row['baseline_s']:.0f} | {1e3 * row['head_s']:.0f} | "
          f"{row['ratio']:.2f} | {row['cpu_ratio']:.2f} | {mem} | {fmt_same(row)} |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Speed, peak memory and effective bandwidth of the local clustering primitive.

``affinity``, ``gather`` and ``scatter`` (hcformer.layers.local_clustering), forward and
backward, with each of its backends:

- ``blocked``: the CPU default, one small matrix product per coarse cell in cache-sized blocks;
- ``unfold``: the GPU default, the paper's appendix B listings: unfold the K candidates of every
  coarse cell and the G pixels of every fine window, one einsum, fold back;
- ``loop``: the "reference" backend, the definition as a loop of broadcast multiply-adds over
  the K candidates (the project's implementation before the blocked one), against which the
  others' values are checked;

and ``dense``, the (B, H·W, h·w) assignment matrix and dense products (small sizes only).

Time is the median of interleaved repetitions (every implementation once per round), so
that the ratios of one run compare the same machine state. Peak memory is measured in a
child process: on CPU as the peak resident set size (VmHWM, reset before each case through
/proc/self/clear_refs) above the size before the case, with glibc told to return every
allocation over 64 KiB to the system on free (MALLOC_MMAP_THRESHOLD_) so that the resident
size follows the live tensors; on CUDA with ``torch.cuda.max_memory_allocated``. Effective
bandwidth is the compulsory traffic of an operation (its inputs read once, its outputs
written once) divided by its time, next to the bandwidth of a plain copy of a large tensor.

    python benchmarks/bench_local_clustering.py                        # the default sweep
    python benchmarks/bench_local_clustering.py --sizes 128 --channels 100 --grids 2:3 \\
        --layout channels_last --json results.json
    python benchmarks/bench_local_clustering.py --smoke                # seconds, for tests
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hcformer.layers import local_clustering_blocked  # noqa: E402
from hcformer.layers.local_clustering import affinity, candidate_offsets, gather, scatter, use_backend  # noqa: E402

OPS = ("affinity", "gather", "scatter")
IMPLS = ("blocked", "unfold", "loop", "dense")


@dataclass(frozen=True)
class Case:
    op: str
    batch: int
    channels: int
    size: int  # fine map side
    grid: int
    kernel: int
    layout: str  # "nchw" or "channels_last"

    @property
    def coarse(self) -> int:
        return -(-self.size // self.grid)

    def name(self) -> str:
        return f"{self.op} B{self.batch} C{self.channels} {self.size}² g{self.grid} k{self.kernel} {self.layout}"


# ---------------------------------------------------------------------------- references
def assignment_matrix(weights: torch.Tensor, coarse_hw: Tuple[int, int], grid: int, kernel: int) -> torch.Tensor:
    """(B, K, H, W) weights → dense (B, H·W, h·w); differentiable in ``weights``."""
    B, K, H, W = weights.shape
    h, w = coarse_hw
    device = weights.device
    offsets = torch.tensor(candidate_offsets(kernel), device=device)  # (K, 2)
    rows = torch.arange(H, device=device)[None, :, None] // grid + offsets[:, 0, None, None]  # (K, H, 1)
    cols = torch.arange(W, device=device)[None, None, :] // grid + offsets[:, 1, None, None]  # (K, 1, W)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)  # (K, H, W)
    cell = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).flatten(1)  # (K, H·W)
    pixel = torch.arange(H * W, device=device).expand(K, -1)
    index = (pixel * (h * w) + cell).flatten()
    values = (weights * inside).flatten(1)  # (B, K·H·W), in the order of ``index``
    return weights.new_zeros(B, H * W * h * w).index_add(1, index, values).view(B, H * W, h * w)


def dense_affinity(fine, coarse, grid, kernel):
    B, C, H, W = fine.shape
    sims = torch.einsum("bcp,bcq->bpq", fine.flatten(2), coarse.flatten(2))  # (B, HW, hw): every pair
    return sims  # the benchmark times the dense similarity itself, the O(N·M) cost


def dense_gather(values, weights, grid, kernel):
    B, C = values.shape[:2]
    A = assignment_matrix(weights, values.shape[-2:], grid, kernel)
    return (A @ values.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, *weights.shape[-2:])


def dense_scatter(fine, weights, grid, kernel):
    B, C = fine.shape[:2]
    h, w = fine.shape[-2] // grid, fine.shape[-1] // grid
    A = assignment_matrix(weights, (h, w), grid, kernel)
    return (A.transpose(1, 2) @ fine.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, h, w)


def primitive_scatter(fine, weights, grid, kernel):
    return scatter(fine, weights, (fine.shape[-2] // grid, fine.shape[-1] // grid), grid, kernel)[0]


def with_backend(name: str, fn: Callable) -> Callable:
    """``fn`` run with the primitive's backend ``name``."""

    def run(*args):
        with use_backend(name):
            return fn(*args)

    return run


PRIMITIVE = {"affinity": affinity, "gather": gather, "scatter": primitive_scatter}
FUNCTIONS: Dict[str, Dict[str, Callable]] = {
    "blocked": {op: with_backend("blocked", fn) for op, fn in PRIMITIVE.items()},
    "unfold": {op: with_backend("unfold", fn) for op, fn in PRIMITIVE.items()},
    "loop": {op: with_backend("reference", fn) for op, fn in PRIMITIVE.items()},
    "dense": {"affinity": dense_affinity, "gather": dense_gather, "scatter": dense_scatter},
}


def function(impl: str, op: str) -> Callable:
    """The function of ``impl`` for ``op``; "blocked@N" is the blocked backend with blocks of N bytes."""
    if not impl.startswith("blocked@"):
        return FUNCTIONS[impl][op]
    chunk_bytes, fn = int(impl[len("blocked@"):]), FUNCTIONS["blocked"][op]

    def with_chunks(*args):
        saved = dict(local_clustering_blocked.CHUNK_BYTES)
        local_clustering_blocked.CHUNK_BYTES.update({k: chunk_bytes for k in ("cpu", "cuda")})
        try:
            return fn(*args)
        finally:
            local_clustering_blocked.CHUNK_BYTES.clear()
            local_clustering_blocked.CHUNK_BYTES.update(saved)

    return with_chunks


# ---------------------------------------------------------------------------- cases
def make_inputs(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two inputs of ``case.op``, requiring grad, in ``case.layout``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, C, S, s, K = case.batch, case.channels, case.size, case.coarse, case.kernel**2

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    weights = rand(B, K, S, S).softmax(1)
    if case.op == "affinity":
        inputs = (rand(B, C, S, S), rand(B, C, s, s))
    elif case.op == "gather":
        inputs = (rand(B, C, s, s), weights)
    else:
        inputs = (rand(B, C, S, S), weights)
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
    return tuple(x.contiguous(memory_format=fmt).requires_grad_() for x in inputs)


def compulsory_bytes(case: Case, element_size: int) -> Dict[str, int]:
    """Bytes an operation must move at least: its inputs read and outputs written once."""
    B, C, K = case.batch, case.channels, case.kernel**2
    fine, coarse, weights = B * C * case.size**2, B * C * case.coarse**2, B * K * case.size**2
    forward = {"affinity": fine + coarse + weights, "gather": coarse + weights + fine, "scatter": fine + weights + coarse}
    # backward: the output gradient and both inputs read, both input gradients written
    backward = {
        "affinity": weights + 2 * (fine + coarse),
        "gather": fine + 2 * (coarse + weights),
        "scatter": coarse + 2 * (fine + weights),
    }
    return {"forward": forward[case.op] * element_size, "backward": backward[case.op] * element_size}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn: Callable, inputs, case: Case, direction: str, grad_out: Optional[torch.Tensor] = None) -> float:
    """Seconds of one forward, or of one backward (its forward run untimed first)."""
    device = inputs[0].device
    if direction == "forward":
        with torch.no_grad():
            synchronize(device)
            start = time.perf_counter()
            fn(*inputs, case.grid, case.kernel)
            synchronize(device)
            return time.perf_counter() - start
    out = fn(*inputs, case.grid, case.kernel)
    grad = grad_out if grad_out is not None else torch.ones_like(out)
    synchronize(device)
    start = time.perf_counter()
    torch.autograd.backward(out, grad)
    synchronize(device)
    elapsed = time.perf_counter() - start
    for x in inputs:
        x.grad = None
    return elapsed


def check(case: Case, inputs, impls: Sequence[str]) -> Dict[str, float]:
    """Max |difference| of every implementation's forward from ``loop``'s, the definition (a sanity check)."""
    if case.op == "affinity":
        # the backends mask out-of-image candidates with -inf, which the dense similarity leaves at 0
        r = case.kernel // 2 * case.grid
        crop = (slice(None), slice(None), slice(r, case.size - r), slice(r, case.size - r))
    else:
        crop = (slice(None),)
    with torch.no_grad():
        ref = FUNCTIONS["loop"][case.op](*inputs, case.grid, case.kernel)[crop].float()
        errors = {}
        for impl in impls:
            if impl == "dense" and case.op == "affinity":
                continue  # the dense similarity is of every pair, not of the candidates
            out = function(impl, case.op)(*inputs, case.grid, case.kernel)[crop].float()
            errors[impl] = (out - ref).abs().max().item()
    return errors


def time_case(case: Case, impls: Sequence[str], repeats: int, device, dtype) -> Dict[str, Dict[str, float]]:
    inputs = make_inputs(case, device, dtype)
    times = {impl: {"forward": [], "backward": []} for impl in impls}
    for impl in impls:  # warm-up: first calls allocate and may load kernels
        for direction in ("forward", "backward"):
            run_once(function(impl, case.op), inputs, case, direction)
    for _ in range(repeats):
        for direction in ("forward", "backward"):
            for impl in impls:
                times[impl][direction].append(run_once(function(impl, case.op), inputs, case, direction))
    return {impl: {d: statistics.median(t) for d, t in per.items()} for impl, per in times.items()}


# ---------------------------------------------------------------------------- memory
def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class PeakMemory:
    """Peak bytes allocated inside a ``with`` block, above what was allocated before it."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self.start = _vm("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.peak = _vm("VmHWM") - self.start


def measure_memory(case: Case, impls: Sequence[str], device, dtype) -> Dict[str, Dict[str, int]]:
    inputs = make_inputs(case, device, dtype)
    peaks = {}
    for impl in impls:
        fn = function(impl, case.op)
        run_once(fn, inputs, case, "backward")  # warm-up outside the measurement
        with PeakMemory(device) as forward:
            with torch.no_grad():
                out = fn(*inputs, case.grid, case.kernel)
            del out
        with PeakMemory(device) as both:
            out = fn(*inputs, case.grid, case.kernel)
            torch.autograd.backward(out, torch.ones_like(out))
            del out
        for x in inputs:
            x.grad = None
        peaks[impl] = {"forward": forward.peak, "forward+backward": both.peak}
    return peaks


def memory_in_child(cases: List[Case], impls_of: Dict[Case, List[str]], args) -> Dict[Case, Dict]:
    """Run ``measure_memory`` for every case in a child process (see the module docstring)."""
    spec = [dict(asdict(c), impls=impls_of[c]) for c in cases]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, os.path.abspath(__file__), "--memory-worker", "--device", args.device,
               "--dtype", args.dtype, "--threads", str(args.threads)]
    done = subprocess.run(command, input=json.dumps(spec), capture_output=True, text=True, env=env, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {c: r for c, r in zip(cases, results)}


def memory_worker(args) -> None:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = []
    for spec in json.loads(sys.stdin.read()):
        impls = spec.pop("impls")
        results.append(measure_memory(Case(**spec), impls, device, dtype))
    print(json.dumps(results))


# ---------------------------------------------------------------------------- machine
def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> Dict[str, float]:
    """GB/s of copying a large tensor: into a preallocated one (read + write), and as a clone
    (a fresh allocation: on CPU the first touch of new pages costs as much as the copy)."""
    n = megabytes * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    results = {}
    for name, fn in (("copy", lambda: dst.copy_(src)), ("clone", lambda: src.clone())):
        fn()
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        results[name] = 2 * src.numel() * 4 / statistics.median(times) / 1e9
    return results


def machine_info(device: torch.device, threads: int) -> Dict[str, object]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------- main
def parse_grid(text: str) -> Tuple[int, int]:
    grid, _, kernel = text.partition(":")
    return int(grid), int(kernel or 3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="fine map sides")
    parser.add_argument("--channels", type=int, nargs="+", default=[100, 200], help="C (queries for gather)")
    parser.add_argument("--grids", type=parse_grid, nargs="+", default=[(2, 3), (4, 3), (8, 3)], metavar="G:K",
                        help="grid size and kernel (candidates per axis), e.g. 2:3 (HCFormer) 4:3 8:3 (SViT-like)")
    parser.add_argument("--large-grid-sizes", type=int, nargs="+", default=[256],
                        help="fine sides for grids other than 2 (their cells are large; fewer sizes)")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layout", choices=["nchw", "channels_last", "both"], default="both")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--dense-max", type=int, default=64, help="largest fine side for the dense reference")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (torch.set_num_threads)")
    parser.add_argument("--chunk-bytes", type=int, nargs="+", metavar="N",
                        help="block sizes of the blocked backend to compare (interleaved, as impls blocked@N) instead of the impls")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    parser.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    parser.add_argument("--smoke", action="store_true", help="a tiny sweep that runs in seconds")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_cases(args) -> List[Case]:
    layouts = ["nchw", "channels_last"] if args.layout == "both" else [args.layout]
    cases = []
    for grid, kernel in args.grids:
        sizes = args.sizes if grid == 2 else args.large_grid_sizes
        for size in sizes:
            for channels in args.channels:
                for layout in layouts:
                    for op in args.ops:
                        cases.append(Case(op, args.batch, channels, size, grid, kernel, layout))
    return cases


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args)
        return {}
    if args.smoke:
        args.sizes, args.channels, args.grids, args.large_grid_sizes = [16], [8], [(2, 3), (4, 3)], [16]
        args.repeats, args.dense_max = 1, 16
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cases = build_cases(args)
    if args.chunk_bytes:
        impls = [f"blocked@{n}" for n in args.chunk_bytes]
    else:
        impls = ["blocked"] + [i for i in args.impls if i != "blocked"]  # speed-ups are relative to blocked
    impls_of = {c: [i for i in impls if i != "dense" or c.size <= args.dense_max] for c in cases}

    info = machine_info(device, args.threads)
    info["copy_GBps"] = copy_bandwidth(device, megabytes=16 if args.smoke else 256)
    print(f"# {info['cpu']} ({info['cores']} cores), torch {info['torch']}, {args.threads} thread(s), "
          f"{args.device} {args.dtype}, {info['date']}")
    print(f"# copy bandwidth: {info['copy_GBps']['copy']:.1f} GB/s into an existing tensor, "
          f"{info['copy_GBps']['clone']:.1f} GB/s as a clone (fresh allocation)")

    memory = {} if args.no_memory else memory_in_child(cases, impls_of, args)
    rows = []
    header = ("case", "impl", "fwd ms", "bwd ms", "fwd ×", "bwd ×", "fwd GB/s", "bwd GB/s", "fwd MiB", "f+b MiB", "max err")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case in cases:
        impls = impls_of[case]
        times = time_case(case, impls, args.repeats, device, dtype)
        errors = check(case, make_inputs(case, device, dtype), impls)
        traffic = compulsory_bytes(case, torch.finfo(dtype).bits // 8)
        for impl in impls:
            t = times[impl]
            row = {
                "case": case.name(), **asdict(case), "impl": impl,
                "forward_ms": 1e3 * t["forward"], "backward_ms": 1e3 * t["backward"],
                # speed-up of blocked over this implementation (1 for blocked itself)
                "forward_speedup": t["forward"] / times[impls[0]]["forward"],
                "backward_speedup": t["backward"] / times[impls[0]]["backward"],
                "forward_GBps": traffic["forward"] / t["forward"] / 1e9,
                "backward_GBps": traffic["backward"] / t["backward"] / 1e9,
                "max_abs_error_vs_loop": errors.get(impl),
            }
            if case in memory:
                row["forward_peak_bytes"] = memory[case][impl]["forward"]
                row["forward_backward_peak_bytes"] = memory[case][impl]["forward+backward"]
            rows.append(row)
            cells = (
                case.name(), impl, f"{row['forward_ms']:.2f}", f"{row['backward_ms']:.2f}",
                f"{row['forward_speedup']:.2f}", f"{row['backward_speedup']:.2f}",
                f"{row['forward_GBps']:.2f}", f"{row['backward_GBps']:.2f}",
                fmt_bytes(row["forward_peak_bytes"]) if "forward_peak_bytes" in row else "-",
                fmt_bytes(row["forward_backward_peak_bytes"]) if "forward_peak_bytes" in row else "-",
                f"{errors[impl]:.1e}" if impl in errors else "-",
            )
            print("| " + " | ".join(cells) + " |", flush=True)
    results = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "memory_worker"}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

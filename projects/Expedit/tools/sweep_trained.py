#!/usr/bin/env python
"""Expedit on a trained HC-Swin for a sweep of α and cluster window k: accuracy, backbone
FLOPs, CPU latency and the similarity of the reconstructed features to the original ones.

For the original model and for every (α, k) (the other MODEL.EXPEDIT.* keys from the config),
with the same MODEL.WEIGHTS (loaded once; each expedited model is a copy of the original):

* PQ / PQ_th / PQ_st / mIoU / AP on DATASETS.TEST[0], with the project's test loop
  (``Trainer.test``, as ``evaluate_expedit.py``);
* backbone GFLOPs at the size of the first test image (fvcore + the analytic clustering
  products, ``expedit.analysis.backbone_flops``, as ``analyze_expedit.py``);
* CPU latency of the whole model's forward on the first test image: the median of
  ``--latency-runs`` passes after one warm-up, the original and the expedited model timed in
  turns in the same loop (so their ratio is measured under the same machine load), with
  ``--threads`` torch threads;
* the mean per-token cosine similarity of res4 (output of the clustered stage) and res5 to the
  original model's, over every token of every test image.

Everything runs on the CPU. Prints a Markdown table and writes ``NAME.json``, ``NAME.md`` and
``NAME.png`` (PQ, mIoU, cosine similarity, GFLOPs and latency vs k, one line per α) to --out.

    python projects/Expedit/tools/sweep_trained.py --out projects/Expedit/figures \\
        --config-file projects/Expedit/configs/shapes/hcformer_swinT_shapes_expedit.yaml \\
        MODEL.WEIGHTS output/hcformer_swinT_shapes/model_final.pth
"""
import argparse
import contextlib
import io
import json
import logging
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # the expedit package

from expedit.analysis import (  # noqa: E402
    backbone_flops,
    build_trained,
    evaluate,
    expedit_cfg,
    expedited_copy,
    headline_metrics,
    interleaved_latency,
    mean_cosine_similarity,
    features_of_test_images,
    valid_alphas,
)
from hcformer.engine.inference_model import inference_cfg  # noqa: E402

logger = logging.getLogger("expedit.sweep")

DEFAULT_CONFIG = PROJECT / "configs" / "shapes" / "hcformer_swinT_shapes_expedit.yaml"
METRICS = ("PQ", "PQ_th", "PQ_st", "mIoU", "AP")


def _gflops(counts: Dict[str, object]) -> Dict[str, float]:
    return {
        "backbone": counts["backbone total"],
        "swin": counts["swin"],
        "expedit clustering": counts["clustering (analytic)"],
        "stage 3": counts["stage 3 (layers.2)"],
    }


def _evaluate(cfg, model, quiet: bool):
    """(headline metrics, res4 / res5 per test image) of one model."""
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        results = evaluate(cfg, model)  # one test set (run_sweep keeps the first): its dict
    return headline_metrics(results), features_of_test_images(cfg, model)


def run_sweep(
    cfg,
    alphas: Optional[Sequence[int]] = None,
    windows: Sequence[int] = (4, 5, 6, 7),
    latency_runs: int = 5,
    warmup: int = 1,
    quiet: bool = True,
    progress: bool = True,
) -> Dict:
    """The sweep on ``cfg`` (an ``inference_cfg`` config, unfrozen; MODEL.WEIGHTS is loaded, empty = random
    init); returns the dict written to ``sweep.json``: ``setting``, ``original`` and one entry
    per (α, k) in ``runs``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if len(cfg.DATASETS.TEST) > 1:
        logger.warning("evaluating on %s only (the first of DATASETS.TEST)", cfg.DATASETS.TEST[0])
        cfg.DATASETS.TEST = (cfg.DATASETS.TEST[0],)
    alphas = list(alphas) if alphas else valid_alphas(cfg)
    from hcformer.engine.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="expedit_sweep_") as tmp:
        cfg.OUTPUT_DIR = tmp  # the evaluators' dumps
        original = build_trained(cfg)
        inputs = next(iter(Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])))
        image = original.preprocess(inputs).tensor

        variants = [(a, k) for a in alphas for k in windows]
        bar = tqdm(total=len(variants) + 1, desc="expedit sweep", disable=not progress)
        metrics, reference = _evaluate(cfg, original, quiet)
        orig = {"metrics": metrics, "gflops": _gflops(backbone_flops(original.backbone, image)), "images": len(reference)}
        bar.update()
        bar.write(f"original: {_summary(orig)}")

        runs: List[Dict] = []
        original_times: List[float] = []
        for alpha, k in variants:
            vcfg = expedit_cfg(cfg, ALPHA=alpha, CLUSTER_WINDOW=k)
            model = expedited_copy(original, vcfg)
            metrics, features = _evaluate(vcfg, model, quiet)
            t_orig, t_fast = interleaved_latency([lambda: original(inputs), lambda: model(inputs)], latency_runs, warmup)
            original_times.append(t_orig)
            run = {
                "alpha": alpha,
                "k": k,
                "metrics": metrics,
                "gflops": _gflops(backbone_flops(model.backbone, image)),
                "latency_s": t_fast,
                "original_latency_s": t_orig,
                "latency_ratio": t_fast / t_orig,
                "cosine": mean_cosine_similarity(reference, features),
            }
            runs.append(run)
            bar.update()
            bar.write(f"α={alpha} k={k}: {_summary(run)}")
        bar.close()

    # the original: the median of its per-row medians
    orig["latency_s"] = statistics.median(original_times) if original_times else None
    e = cfg.MODEL.EXPEDIT
    setting = {
        "weights": cfg.MODEL.WEIGHTS,
        "dataset": cfg.DATASETS.TEST[0],
        "images": orig["images"],
        "input": list(image.shape[-2:]),
        "stage": e.STAGE,
        "K": cfg.MODEL.SWIN.WINDOW_SIZE,
        "alphas": alphas,
        "windows": list(windows),
        "lambda": e.LAMBDA,
        "kappa": e.KAPPA,
        "t": e.TEMPERATURE,
        "topk": e.TOPK,
        "threads": torch.get_num_threads(),
        "latency_runs": latency_runs,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    return {"setting": setting, "original": orig, "runs": runs}


def _summary(entry: Dict) -> str:
    m = entry["metrics"]
    text = " ".join(f"{key} {m[key]:.2f}" for key in METRICS if key in m)
    text += f" | backbone {entry['gflops']['backbone']:.3f} GFLOPs"
    if "cosine" in entry:
        text += f" | {entry['latency_s'] * 1e3:.1f} ms (x{entry['latency_ratio']:.2f})"
        text += " | cos " + " ".join(f"{n} {v:.3f}" for n, v in entry["cosine"].items())
    return text


def markdown_table(sweep: Dict) -> str:
    """The sweep as a Markdown table (original first; GFLOPs and latency relative to it)."""
    s, orig = sweep["setting"], sweep["original"]
    present = [key for key in METRICS if key in orig["metrics"]]
    head = ["α", "k"] + present + ["backbone GFLOPs", "latency ms", "cos res4", "cos res5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    base_flops, base_time = orig["gflops"]["backbone"], orig["latency_s"]
    cells = ["—", f"{s['K']} (original)"] + [f"{orig['metrics'][key]:.1f}" for key in present]
    cells += [f"{base_flops:.3f}", f"{base_time * 1e3:.1f}" if base_time else "—", "1.000", "1.000"]
    lines.append("| " + " | ".join(cells) + " |")
    for run in sweep["runs"]:
        flops = run["gflops"]["backbone"]
        cells = [str(run["alpha"]), str(run["k"])] + [f"{run['metrics'][key]:.1f}" for key in present]
        cells += [
            f"{flops:.3f} ({100 * (flops / base_flops - 1):+.1f} %)",
            f"{run['latency_s'] * 1e3:.1f} (×{run['latency_ratio']:.2f})",
            f"{run['cosine']['res4']:.3f}",
            f"{run['cosine']['res5']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(sweep: Dict, path: Path) -> None:
    """PQ, mIoU, cosine similarity and cost (relative to the original) vs k, one line per α."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, orig, runs = sweep["setting"], sweep["original"], sweep["runs"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, alpha in enumerate(s["alphas"]):
        rows = sorted((r for r in runs if r["alpha"] == alpha), key=lambda r: r["k"])
        ks, c = [r["k"] for r in rows], colours[i % len(colours)]
        for ax, key in zip(axes[:2], ("PQ", "mIoU")):
            if key in orig["metrics"]:
                ax.plot(ks, [r["metrics"][key] for r in rows], marker="o", color=c, label=f"α = {alpha}")
        axes[2].plot(ks, [r["cosine"]["res4"] for r in rows], marker="o", color=c, label=f"α = {alpha}, res4")
        axes[2].plot(ks, [r["cosine"]["res5"] for r in rows], marker="s", ls="--", color=c, label=f"α = {alpha}, res5")
        axes[3].plot(ks, [r["latency_ratio"] for r in rows], marker="o", color=c, label=f"α = {alpha}, latency")
        flops = [r["gflops"]["backbone"] / orig["gflops"]["backbone"] for r in rows]
        axes[3].plot(ks, flops, marker="s", ls="--", color=c, label=f"α = {alpha}, backbone FLOPs")
    for ax, key in zip(axes[:2], ("PQ", "mIoU")):
        if key in orig["metrics"]:
            ax.axhline(orig["metrics"][key], color="k", ls=":", label="original")
        ax.set_title(key)
    axes[2].set_title("cosine similarity to original")
    axes[3].axhline(1.0, color="k", ls=":")
    axes[3].set_title(f"cost / original (CPU, {s['threads']} thread(s))")
    for ax in axes:
        ax.set_xlabel(f"k (clusters per window side, K = {s['K']})")
        ax.set_xticks(s["windows"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Expedit on HC-Swin {Path(s['weights']).name or '(random init)'} ({s['dataset']}, {s['images']} images, "
        f"{s['input'][0]}×{s['input'][1]}; "
        f"λ {s['lambda']}, κ {s['kappa']}, t {s['t']}, top-{s['topk']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(sweep: Dict, out: Path, name: str = "sweep") -> str:
    """Writes NAME.json, NAME.md and NAME.png to ``out``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(sweep, indent=1) + "\n")
    table = markdown_table(sweep)
    (out / f"{name}.md").write_text(table)
    plot(sweep, out / f"{name}.png")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG))
    parser.add_argument("--alphas", type=int, nargs="+", help="default: every α of MODEL.EXPEDIT.STAGE")
    parser.add_argument("--windows", type=int, nargs="+", default=[4, 5, 6, 7], help="cluster windows k (≤ K)")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (evaluation and latency)")
    parser.add_argument("--out", default="output/expedit_sweep")
    parser.add_argument("--name", default="sweep", help="file names: NAME.json / .md / .png")
    parser.add_argument("--verbose", action="store_true", help="show the evaluators' own printing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ... (MODEL.WEIGHTS)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    cfg = inference_cfg(args.config_file, args.opts, freeze=False)
    sweep = run_sweep(cfg, args.alphas, args.windows, args.latency_runs, quiet=not args.verbose)
    sweep["setting"]["config"] = args.config_file
    print(write(sweep, Path(args.out), args.name))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Cosine similarity of reconstructed vs original stage features for a sweep of α and k.

The paper's argument for skipping fine-tuning (its Table 1) is that the reconstructed
high-resolution features stay close to the original ones. This measures it on a small,
*randomly initialised* HC-Swin (no trained weights are available offline): the output of the
clustered stage (res4) and of the next one (res5), per token, averaged over a few rendered
shapes images. Random weights make the blocks' updates small next to the residual stream, so
the similarities are optimistic compared with a trained model; the trend over α and k is
what the sweep shows. Writes a Markdown table and a PNG.

    python projects/Expedit/tools/feature_similarity.py --out projects/Expedit/figures
"""
import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the expedit package

from expedit import expedite_swin  # noqa: E402
from expedit.analysis import mean_cosine_similarity, per_image  # noqa: E402
from hcformer_shapes.generator import render_sample  # noqa: E402
from hcformer.modeling.backbone.swin import HCSwin  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="projects/Expedit/figures")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=384, help="image side (stage 3: size/16 tokens)")
    parser.add_argument("--alphas", type=int, nargs="+", default=[4, 5, 6, 7, 8, 9])
    parser.add_argument("--windows", type=int, nargs="+", default=[4, 6, 8, 10])
    args = parser.parse_args()
    torch.set_num_threads(1)

    # Swin-T's depths at half width, Swin-L's 12 x 12 windows; stage 3 is blocks 4..9
    torch.manual_seed(0)
    model = HCSwin(embed_dim=48, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=12).eval()
    rng = np.random.default_rng(0)
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    images = torch.stack(
        [(torch.from_numpy(render_sample(rng, args.size).image).float() - mean) / std for _ in range(args.images)]
    ).permute(0, 3, 1, 2)
    with torch.no_grad():
        reference = per_image(model(images))

    rows = []
    for k in args.windows:
        for alpha in args.alphas:
            fast = expedite_swin(copy.deepcopy(model), stage=2, alpha=alpha, cluster_window=k, kernel=7, iterations=5, temperature=0.05, topk=10)
            with torch.no_grad():
                similarity = mean_cosine_similarity(reference, per_image(fast(images)))
            sims = [similarity["res4"], similarity["res5"]]
            rows.append((k, alpha, *sims))
            print(f"k={k:2d} alpha={alpha}: res4 {sims[0]:.4f} res5 {sims[1]:.4f}", flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| k (of K = 12) | " + " | ".join(f"α = {a}" for a in args.alphas) + " |",
             "|---|" + "---|" * len(args.alphas)]
    for k in args.windows:
        cells = [f"{r[2]:.3f} / {r[3]:.3f}" for r in rows if r[0] == k]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    (out_dir / "feature_similarity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, column, name in ((axes[0], 2, "res4 (clustered stage)"), (axes[1], 3, "res5 (next stage)")):
        for k in args.windows:
            ax.plot(args.alphas, [r[column] for r in rows if r[0] == k], marker="o", label=f"k = {k}")
        ax.set_title(name)
        ax.set_xlabel("α (blocks before clustering; stage 3 = 4..9)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine similarity to original")
    axes[1].legend()
    fig.suptitle("Expedit on a random-init HC-Swin (K = 12, λ 7, κ 5, t 0.05, top-10)")
    fig.tight_layout()
    fig.savefig(out_dir / "feature_similarity.png", dpi=120)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time SLIC (batched torch) and SEEDS (OpenCV contrib) superpixels on rendered shapes images.

Prints one Markdown row per (method, size): milliseconds per image, best of ``--repeats`` runs
of a batch, and the number of superpixels obtained.

    python projects/CAST/tools/time_superpixels.py --sizes 128 224 512 --segments 64 196 1024
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the cast package

from cast.superpixels import SUPERPIXEL_METHODS, compute_superpixels  # noqa: E402
from hcformer_shapes.generator import render_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 512], help="image sides")
    parser.add_argument("--segments", type=int, nargs="+", default=[64, 196, 1024], help="superpixels per size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(SUPERPIXEL_METHODS), choices=SUPERPIXEL_METHODS)
    args = parser.parse_args()
    if len(args.sizes) != len(args.segments):
        parser.error("--sizes and --segments need one value each per size")
    torch.set_num_threads(args.threads)

    rows = []
    for size, segments in tqdm(list(zip(args.sizes, args.segments)), desc="sizes"):
        rng = np.random.default_rng(0)
        images = torch.stack(
            [torch.from_numpy(render_sample(rng, size).image).permute(2, 0, 1).float() / 255 for _ in range(args.batch)]
        )
        for method in args.methods:
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                labels, count = compute_superpixels(images, method, num_segments=segments)
                best = min(best, time.perf_counter() - start)
            found = np.mean([len(torch.unique(m)) for m in labels])
            rows.append((method, size, segments, 1e3 * best / args.batch, found, count))
    print(f"\nbatch {args.batch}, {args.threads} thread(s), best of {args.repeats}\n")
    print("| method | image | asked | ms / image | superpixels found (mean) | K |")
    print("|---|---|---|---|---|---|")
    for method, size, segments, ms, found, count in rows:
        print(f"| {method} | {size}² | {segments} | {ms:.1f} | {found:.0f} | {count} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Convert ADE20K (SceneParsing, 150 classes) labels to detectron2's convention.

Reads ``ROOT/ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = other,
1..150 = classes) and writes ``ROOT/ADEChallengeData2016/annotations_detectron2/<same path>``
with label - 1, so classes are 0..149 and "other" becomes 255 (ignored), which is what the
``ade20k_sem_seg_{train,val}`` datasets read.

Every PNG is written to a temporary name and renamed, so an interrupted run leaves no truncated
file; a rerun skips the PNGs that already exist and deletes the temporary files that a killed run
(SIGKILL, power loss) left behind.

Usage:
    python datasets/prepare_ade20k_sem_seg.py [--root $DETECTRON2_DATASETS]
"""

import argparse
import functools
import multiprocessing
import os
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from hcformer.checkpoint.atomic_files import remove_abandoned_temporary_files, write_atomically

SPLITS = ("training", "validation")


def shift_labels(labels: np.ndarray) -> np.ndarray:
    """ADE20K labels (uint8, 0 = other) -> detectron2 labels (uint8, 255 = other)."""
    if labels.dtype != np.uint8:
        raise ValueError(f"ADE20K label PNGs are uint8, got {labels.dtype}")
    return labels - np.uint8(1)  # uint8 arithmetic wraps 0 around to 255


def _convert_one(name: str, input_dir: str, output_dir: str) -> bool:
    """Convert one label PNG; return False when its output already existed."""
    output = os.path.join(output_dir, name)
    if os.path.exists(output):
        return False
    labels = shift_labels(np.asarray(Image.open(os.path.join(input_dir, name))))
    write_atomically(output, lambda f: Image.fromarray(labels).save(f, format="PNG"))
    return True


def prepare_split(input_dir: str, output_dir: str, workers: int = 1) -> int:
    """Convert every PNG of ``input_dir``; return how many were written."""
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"ADE20K annotation folder {input_dir!r} does not exist")
    names = sorted(n for n in os.listdir(input_dir) if n.endswith(".png"))
    os.makedirs(output_dir, exist_ok=True)
    removed = remove_abandoned_temporary_files(output_dir)
    if removed:
        print(f"{output_dir}: removed {len(removed)} temporary files of an interrupted run")
    convert = functools.partial(_convert_one, input_dir=input_dir, output_dir=output_dir)
    progress = dict(total=len(names), desc=os.path.basename(output_dir))
    if workers <= 1:
        return sum(tqdm(map(convert, names), **progress))
    with multiprocessing.Pool(workers) as pool:
        return sum(tqdm(pool.imap_unordered(convert, names, chunksize=32), **progress))


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS)",
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    ade = os.path.join(args.root, "ADEChallengeData2016")
    for split in SPLITS:
        written = prepare_split(
            os.path.join(ade, "annotations", split),
            os.path.join(ade, "annotations_detectron2", split),
            args.workers,
        )
        print(f"{split}: wrote {written} label PNGs")


if __name__ == "__main__":
    main()

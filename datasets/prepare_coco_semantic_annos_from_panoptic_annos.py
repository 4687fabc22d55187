#!/usr/bin/env python
"""Make the semantic label PNGs used by ``*_panoptic_with_sem_seg`` datasets from COCO panoptic
annotations.

For each split, reads ``ROOT/annotations/panoptic_{split}.json`` and ``ROOT/panoptic_{split}/``
and writes ``ROOT/panoptic_semseg_{split}/<same name>.png``: uint8, pixel = contiguous id of the
segment's category (categories sorted by id, things and stuff together, crowd included),
255 = unlabeled. For COCO this is the order of detectron2's COCO_CATEGORIES, which the registered
metadata uses. Panoptic PNGs are read with the training checks (RGB, every segment id listed in
the JSON). Datasets registered with DATASETS.COCO_PANOPTIC derive the same PNGs on first use
(``hcformer/data/datasets/coco_panoptic_files.py``, which this script shares its conversion with).

Every PNG is written to a temporary name and renamed, so an interrupted run leaves no truncated
file; a rerun skips the PNGs that already exist and deletes the temporary files that a killed run
(SIGKILL, power loss) left behind.

Usage:
    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py            # COCO 2017
    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py --root DIR --splits val
"""

import argparse
import functools
import json
import multiprocessing
import os
from typing import Dict, Sequence

from PIL import Image
from tqdm import tqdm

from hcformer.checkpoint.atomic_files import remove_abandoned_temporary_files, write_atomically
from hcformer.data.datasets.coco_panoptic_files import contiguous_ids, panoptic_semantic_labels


def _convert_one(
    annotation: Dict, panoptic_root: str, output_root: str, id_map: Dict[int, int]
) -> bool:
    """Convert one image; return False when its output already existed."""
    output = os.path.join(output_root, annotation["file_name"])
    if os.path.exists(output):
        return False
    png = os.path.join(panoptic_root, annotation["file_name"])
    labels = panoptic_semantic_labels(png, annotation["segments_info"], id_map)
    write_atomically(output, lambda f: Image.fromarray(labels).save(f, format="PNG"))
    return True


def prepare_split(
    panoptic_json: str, panoptic_root: str, output_root: str, workers: int = 1
) -> int:
    """Convert every annotation of ``panoptic_json``; return how many PNGs were written."""
    for path in (panoptic_json, panoptic_root):
        if not os.path.exists(path):
            raise FileNotFoundError(f"COCO panoptic input {path!r} does not exist")
    with open(panoptic_json) as f:
        content = json.load(f)
    id_map = contiguous_ids(content["categories"])
    os.makedirs(output_root, exist_ok=True)
    removed = remove_abandoned_temporary_files(output_root)
    if removed:
        print(f"{output_root}: removed {len(removed)} temporary files of an interrupted run")
    convert = functools.partial(
        _convert_one, panoptic_root=panoptic_root, output_root=output_root, id_map=id_map
    )
    annotations = content["annotations"]
    progress = dict(total=len(annotations), desc=os.path.basename(output_root))
    if workers <= 1:
        return sum(tqdm(map(convert, annotations), **progress))
    with multiprocessing.Pool(workers) as pool:
        return sum(tqdm(pool.imap_unordered(convert, annotations, chunksize=16), **progress))


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "coco"),
        help="folder with annotations/ and panoptic_<split>/ (default: $DETECTRON2_DATASETS/coco)",
    )
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    for split in args.splits:
        written = prepare_split(
            os.path.join(args.root, "annotations", f"panoptic_{split}.json"),
            os.path.join(args.root, f"panoptic_{split}"),
            os.path.join(args.root, f"panoptic_semseg_{split}"),
            args.workers,
        )
        print(f"{split}: wrote {written} semantic PNGs")


if __name__ == "__main__":
    main()

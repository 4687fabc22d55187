#!/usr/bin/env python
"""Make the semantic label PNGs used by ``*_panoptic_with_sem_seg`` datasets from COCO panoptic
annotations.

For each split, reads ``ROOT/annotations/panoptic_{split}.json`` and ``ROOT/panoptic_{split}/``
and writes ``ROOT/panoptic_semseg_{split}/<same name>.png``: uint8, pixel = contiguous id of the
segment's category (categories sorted by id, things and stuff together, crowd included),
255 = unlabeled. For COCO this is the order of detectron2's COCO_CATEGORIES, which the registered
metadata uses.

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
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from hcformer.utils.atomic_png import remove_stale_temporary_files, save_png_atomically

IGNORE_LABEL = 255


def contiguous_ids(categories: List[Dict]) -> Dict[int, int]:
    """Category id -> position among the categories sorted by id."""
    ids = sorted(c["id"] for c in categories)
    if len(ids) >= IGNORE_LABEL:
        raise ValueError(f"{len(ids)} categories do not fit in uint8 labels below {IGNORE_LABEL}")
    return {category_id: i for i, category_id in enumerate(ids)}


def panoptic_to_semantic(
    panoptic_rgb: np.ndarray, segments_info: List[Dict], id_map: Dict[int, int]
) -> np.ndarray:
    """H x W x 3 COCO panoptic PNG -> H x W uint8 contiguous category ids (255 = unlabeled)."""
    rgb = panoptic_rgb.astype(np.int64)
    segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    semantic = np.full(segment_ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for segment in segments_info:
        semantic[segment_ids == segment["id"]] = id_map[segment["category_id"]]
    return semantic


def _convert_one(
    annotation: Dict, panoptic_root: str, output_root: str, id_map: Dict[int, int]
) -> bool:
    """Convert one image; return False when its output already existed."""
    output = os.path.join(output_root, annotation["file_name"])
    if os.path.exists(output):
        return False
    panoptic = np.asarray(
        Image.open(os.path.join(panoptic_root, annotation["file_name"])).convert("RGB")
    )
    save_png_atomically(panoptic_to_semantic(panoptic, annotation["segments_info"], id_map), output)
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
    removed = remove_stale_temporary_files(output_root)
    if removed:
        print(f"{output_root}: removed {removed} temporary files of an interrupted run")
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

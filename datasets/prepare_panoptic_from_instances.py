#!/usr/bin/env python
"""Convert a COCO instance JSON, as annotation tools export it, to COCO panoptic.

    python datasets/prepare_panoptic_from_instances.py IN.json IMAGE_ROOT OUT_DIR [--stuff-name NAME | --no-stuff]

writes

    OUT_DIR/panoptic.json                        COCO panoptic: images, annotations, categories
    OUT_DIR/panoptic/<image name>.png            panoptic PNGs (segment id = R + 256 G + 256^2 B)
    OUT_DIR/panoptic_semseg/<image name>.png     semantic PNGs (contiguous class ids, 255 = void)
    OUT_DIR/panoptic_instances/instances.json    the visible thing segments, for mask AP

which panoptic training registers with
``DATASETS.COCO_PANOPTIC '[["NAME", "OUT_DIR/panoptic.json", "OUT_DIR/panoptic", "IMAGE_ROOT"]]'``
(the semantic PNGs and the instance JSON are the ones that registration would derive; see
``hcformer/data/datasets/coco_panoptic_files.py``).

Rules:

- every category of IN.json becomes a thing category with its id and name, annotated or not;
- masks are polygons (lists of x, y coordinates) or RLE, compressed or not;
- where instances overlap, a pixel goes to the instance with the smallest mask (ties: the one
  listed first in IN.json), so that an object lying on a larger one keeps its pixels; an
  instance left without any pixel is dropped (the summary counts them);
- crowd annotations (``iscrowd`` 1) give no segment: their pixels outside other instances are
  void, i.e. ignored by training and evaluation;
- the pixels in no annotation form one stuff segment of a new category, NAME (default
  "background"), whose id is the largest category id + 1; with ``--no-stuff`` they are void.

Checked, each failure one ``error:`` line naming the file and the entry (exit code 2, OUT_DIR not
created): the JSON's structure, that every annotation names a listed image and category, polygons
(an even number, at least 6, of finite coordinates), RLE sizes, and that every image exists, can be
read and has the width and height the JSON gives (after EXIF rotation, as training reads it).
OUT_DIR is built in a temporary folder renamed into place when complete, so a failure or an
interruption leaves nothing behind; a rerun with the same input does nothing, with another input
it asks to delete OUT_DIR first, and an existing folder that is not empty is never written into.
"""

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from panopticapi.utils import id2rgb
from PIL import Image
from tqdm import tqdm

from hcformer.data.checks import check_record_size, check_rle_sizes
from hcformer.data.dataset_loading import DatasetLoadError, read_annotation_json, require_entries
from hcformer.data.dataset_mappers.mask_former_instance_dataset_mapper import annotation_mask
from hcformer.data.datasets.atomic_dir import build_directory_once, read_marker
from hcformer.data.datasets.coco_panoptic_files import ensure_derived_files, file_sha256
from hcformer.data.image_reading import read_image_file

_VERSION = 1


class ConversionError(ValueError):
    """IN.json or its images cannot be converted; the message names the file and the entry."""


def read_instances_json(path: str) -> Dict:
    """The content of a COCO instance JSON, with the structure the conversion needs."""
    try:
        content = read_annotation_json(path, "instances")  # images, categories: the loaders' own checks
    except DatasetLoadError as e:
        raise ConversionError(str(e)) from None
    if not isinstance(content.get("annotations"), list):
        raise ConversionError(f"{path} has no 'annotations' list; expected COCO instance format")
    require_entries(path, "images", content["images"], ("id",), unique_ids=True)
    require_entries(path, "categories", content["categories"], ("id", "name"), unique_ids=True)
    require_entries(path, "annotations", content["annotations"], ("image_id", "category_id", "segmentation"))
    ids = [c["id"] for c in content["categories"]]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConversionError(f"{path}: expected a non-empty 'categories' list with integer ids, got ids {ids[:10]}")
    return content


def check_polygons(polygons: List, where: str) -> None:
    """Each polygon must be a flat list of an even number (>= 6) of finite coordinates."""
    if not polygons:
        raise ConversionError(f"{where}: the segmentation is an empty list of polygons")
    for i, polygon in enumerate(polygons):
        numbers = isinstance(polygon, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon
        )
        if not numbers or len(polygon) < 6 or len(polygon) % 2:
            shown = str(polygon)[:80]
            raise ConversionError(
                f"{where}: polygon {i} is {shown}; expected a flat list [x1, y1, x2, y2, x3, y3, ...] "
                "of at least 3 points (an even number, >= 6, of finite numbers)"
            )


def instance_mask(annotation: Dict, height: int, width: int, where: str) -> np.ndarray:
    """H x W bool mask of a polygon or RLE ``segmentation``; ``where`` names it in errors."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        check_polygons(segmentation, where)
    elif isinstance(segmentation, dict):
        try:
            check_rle_sizes([annotation], (height, width), where)
        except ValueError as e:
            raise ConversionError(str(e)) from None
    else:
        raise ConversionError(
            f"{where}: segmentation is a {type(segmentation).__name__}; expected polygons (a list) or RLE"
        )
    return annotation_mask(segmentation, T.TransformList([]), (height, width))


def panoptic_segments(
    masks: List[np.ndarray], crowd: List[bool], height: int, width: int, with_stuff: bool
) -> Tuple[np.ndarray, List[int], Optional[np.ndarray]]:
    """Resolve overlaps (see the module docstring).

    Returns:
        owner: H x W index of the non-crowd instance owning each pixel, -1 for none;
        kept: the indices of the instances owning at least one pixel, in input order;
        stuff: H x W bool mask of the pixels in no annotation (None without stuff).
    """
    owner = np.full((height, width), -1, dtype=np.int64)
    areas = [int(mask.sum()) for mask in masks]
    things = [i for i in range(len(masks)) if not crowd[i]]
    # the largest first, so that the smallest (then the first listed) is painted last
    for i in sorted(things, key=lambda i: (areas[i], i), reverse=True):
        owner[masks[i]] = i
    kept = sorted(set(np.unique(owner).tolist()) - {-1})
    if not with_stuff:
        return owner, kept, None
    in_crowd = np.zeros((height, width), dtype=bool)
    for i in range(len(masks)):
        if crowd[i]:
            in_crowd |= masks[i]
    return owner, kept, (owner == -1) & ~in_crowd


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _png_names(images: List[Dict], path: str) -> Dict:
    """Image id -> panoptic PNG name: the image's name without folder and extension, + ".png"."""
    names, owners = {}, {}
    for image in images:
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        if stem in owners:
            raise ConversionError(
                f"{path}: images {owners[stem]!r} and {image['file_name']!r} would both give the "
                f"panoptic PNG {stem}.png; rename one of them"
            )
        owners[stem] = image["file_name"]
        names[image["id"]] = f"{stem}.png"
    return names


def convert_image(
    image: Dict, annotations: List[Dict], image_root: str, stuff_id: Optional[int], json_path: str
) -> Tuple[np.ndarray, List[Dict], int]:
    """(panoptic segment ids H x W, segments_info, number of instances dropped) of one image."""
    file_name = os.path.join(image_root, image["file_name"])
    check_record_size(dict(image), read_image_file(file_name))  # exists, readable, same size
    height, width = image["height"], image["width"]
    masks, crowd = [], []
    for annotation in annotations:
        where = (
            f"{json_path}: annotation {annotation.get('id', '(no id)')} of image {image['file_name']!r}"
        )
        masks.append(instance_mask(annotation, height, width, where))
        crowd.append(bool(annotation.get("iscrowd", 0)))
    owner, kept, stuff = panoptic_segments(masks, crowd, height, width, stuff_id is not None)

    segment_ids = np.zeros((height, width), dtype=np.int64)  # 0 = void
    segments = []
    for i in kept:
        segments.append({"id": len(segments) + 1, "category_id": annotations[i]["category_id"], "mask": owner == i})
    if stuff is not None and stuff.any():
        segments.append({"id": len(segments) + 1, "category_id": stuff_id, "mask": stuff})
    for segment in segments:
        mask = segment.pop("mask")
        segment_ids[mask] = segment["id"]
        segment.update(iscrowd=0, area=int(mask.sum()), bbox=_bbox(mask))
    dropped = sum(not c for c in crowd) - len(kept)
    return segment_ids, segments, dropped


def convert(
    json_path: str, image_root: str, out_dir: str, stuff_name: Optional[str] = "background"
) -> Dict:
    """Write OUT_DIR (see the module docstring); return a summary. ``stuff_name`` None: the
    pixels in no annotation are void.

    Raises:
        ConversionError, BadSampleError, FileNotFoundError: naming the file and what is wrong;
            nothing is written then.
    """
    if not os.path.isdir(image_root):
        raise ConversionError(f"IMAGE_ROOT {image_root!r} is not a folder")
    content = read_instances_json(json_path)
    categories = sorted(content["categories"], key=lambda c: c["id"])
    category_ids = {c["id"] for c in categories}
    stuff_id = None
    if stuff_name is not None:
        clash = [c for c in categories if c["name"] == stuff_name]
        if clash:
            raise ConversionError(
                f"{json_path}: category {clash[0]['id']} is already called {stuff_name!r}; give the "
                "pixels in no annotation another name with --stuff-name, or none with --no-stuff"
            )
        stuff_id = max(category_ids) + 1
    images = {image["id"]: image for image in content["images"]}
    per_image: Dict = {image_id: [] for image_id in images}
    for i, annotation in enumerate(content["annotations"]):
        if annotation["image_id"] not in images:
            raise ConversionError(
                f"{json_path}: annotation {annotation.get('id', f'#{i}')} is of image_id "
                f"{annotation['image_id']!r}, which is not in 'images'"
            )
        if annotation["category_id"] not in category_ids:
            raise ConversionError(
                f"{json_path}: annotation {annotation.get('id', f'#{i}')} has category_id "
                f"{annotation['category_id']!r}, which is not in 'categories' (ids {sorted(category_ids)})"
            )
        per_image[annotation["image_id"]].append(annotation)
    png_names = _png_names(content["images"], json_path)

    manifest = {
        "converted_from_sha256": file_sha256(json_path),
        "image_root": os.path.abspath(image_root),
        "stuff": stuff_name,
        "version": _VERSION,
    }
    found = read_marker(out_dir)
    if found == manifest:
        return {"out_dir": out_dir, "up_to_date": True}
    if found:
        raise ConversionError(
            f"{out_dir} holds a conversion of another input ({found}); delete it to convert again"
        )
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConversionError(f"OUT_DIR {out_dir} exists and is not an empty folder; choose a new one")

    summary = {"out_dir": out_dir, "images": len(images), "instances": 0, "crowd": 0, "dropped": 0}

    def build(tmp_dir: str) -> None:
        os.makedirs(os.path.join(tmp_dir, "panoptic"))
        annotations = []
        for image_id, image in tqdm(images.items(), desc="panoptic PNGs", unit="image"):
            segment_ids, segments, dropped = convert_image(
                image, per_image[image_id], image_root, stuff_id, json_path
            )
            Image.fromarray(id2rgb(segment_ids)).save(os.path.join(tmp_dir, "panoptic", png_names[image_id]))
            annotations.append({"image_id": image_id, "file_name": png_names[image_id], "segments_info": segments})
            summary["crowd"] += sum(bool(a.get("iscrowd", 0)) for a in per_image[image_id])
            summary["instances"] += len(per_image[image_id])
            summary["dropped"] += dropped
        panoptic_categories = [
            {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", ""), "isthing": 1}
            for c in categories
        ]
        if stuff_id is not None:
            panoptic_categories.append({"id": stuff_id, "name": stuff_name, "supercategory": "", "isthing": 0})
        panoptic = {
            "info": {"description": f"converted from {os.path.basename(json_path)} by prepare_panoptic_from_instances.py"},
            "images": [
                {key: image[key] for key in ("id", "file_name", "height", "width")} for image in content["images"]
            ],
            "annotations": annotations,
            "categories": panoptic_categories,
        }
        panoptic_json = os.path.join(tmp_dir, "panoptic.json")
        with open(panoptic_json, "w") as f:
            json.dump(panoptic, f)
        # what DATASETS.COCO_PANOPTIC would derive on first use, made now (same code, same marker)
        ensure_derived_files(panoptic_json, os.path.join(tmp_dir, "panoptic"))
        for lock in (".panoptic_semseg.lock", ".panoptic_instances.lock"):
            os.remove(os.path.join(tmp_dir, lock))

    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above): the complete folder is renamed into its place
    build_directory_once(out_dir, build, manifest)
    summary["stuff_category_id"] = stuff_id
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("instances_json", help="COCO instance JSON (polygons or RLE)")
    parser.add_argument("image_root", help="folder the JSON's image file names are relative to")
    parser.add_argument("out_dir", help="new folder for the panoptic dataset")
    stuff = parser.add_mutually_exclusive_group()
    stuff.add_argument(
        "--stuff-name", default="background", help="category of the pixels in no annotation (default: background)"
    )
    stuff.add_argument("--no-stuff", action="store_true", help="leave the pixels in no annotation void (ignored)")
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.instances_json, args.image_root, args.out_dir, None if args.no_stuff else args.stuff_name
        )
    except (ValueError, FileNotFoundError) as e:  # the messages name the file and the entry
        print(f"error: {e}; nothing written", file=sys.stderr)
        return 2
    if summary.get("up_to_date"):
        print(f"{args.out_dir} is already the conversion of {args.instances_json}; nothing to do")
        return 0
    stuff_note = (
        f"stuff category {args.stuff_name!r} = id {summary['stuff_category_id']}"
        if summary["stuff_category_id"] is not None
        else "no stuff category"
    )
    print(
        f"wrote {args.out_dir}: {summary['images']} images, {summary['instances']} annotations "
        f"({summary['crowd']} crowd, made void; {summary['dropped']} dropped: no visible pixel, e.g. "
        f"hidden by smaller instances), {stuff_note}"
    )
    root = args.out_dir.rstrip("/")
    print(
        "register it with: DATASETS.COCO_PANOPTIC "
        f"'[[\"NAME\", \"{root}/panoptic.json\", \"{root}/panoptic\", \"{args.image_root}\"]]'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""COCO-panoptic datasets of any origin: reading their JSON, their records, and the files that
Mask2Former-style training and evaluation need besides the panoptic PNGs.

detectron2's ``load_coco_panoptic_json`` is written for COCO itself: it derives each image's file
from the PNG's name with a ".jpg" extension and needs integer image ids. :func:`load_panoptic_records`
takes the image files from the JSON's "images" list instead, so PNG photos, other names and string
ids work too. Contiguous class ids follow Mask2Former: categories sorted by id, things and stuff in
one list (``panoptic_metadata_from_categories``).

Two more annotations are derived from the panoptic ones when a dataset lacks them, on first use,
next to its panoptic PNG folder ``P``:

- ``P_semseg/<PNG name>``: semantic labels for mIoU, uint8, pixel = contiguous id of its segment's
  category (crowd included), 255 = void; what ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``
  writes for COCO;
- ``P_instances/instances.json``: COCO instances for mask AP, one RLE annotation per thing segment
  (its visible pixels; crowd segments keep ``iscrowd``).

Each folder is built once, in a temporary folder that is renamed into place when complete
(:func:`~hcformer.data.datasets.atomic_dir.build_directory_once`: other processes wait for the
first one), and records the SHA-256 of the panoptic JSON it was derived from. A folder derived from
another version of the JSON, or one of that name that hcformer did not write, is refused with a
message: never used silently, never deleted.
"""

import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
from detectron2.utils.colormap import colormap
from panopticapi.utils import rgb2id
from PIL import Image
from tqdm import tqdm

from ..dataset_loading import DatasetLoadError, read_annotation_json, require_entries
from ..checks import check_panoptic_segments
from ..dataset_mappers.mapper_utils import semantic_from_panoptic
from ..image_reading import read_label_file
from .atomic_dir import build_directory_once, read_marker
from .register_coco_panoptic_annos_semseg import panoptic_metadata_from_categories

__all__ = [
    "IGNORE_LABEL",
    "contiguous_ids",
    "read_panoptic_json",
    "panoptic_metadata",
    "panoptic_semantic_labels",
    "load_panoptic_records",
    "derived_semantic_root",
    "derived_instances_json",
    "file_sha256",
    "ensure_derived_files",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
_VERSION = 1  # of the derived files; part of their manifest


def contiguous_ids(categories: List[Dict]) -> Dict[int, int]:
    """Category id -> position among the categories sorted by id (things and stuff together)."""
    ids = sorted(c["id"] for c in categories)
    if len(ids) >= IGNORE_LABEL:
        raise ValueError(f"{len(ids)} categories do not fit in uint8 labels below {IGNORE_LABEL}")
    return {category_id: i for i, category_id in enumerate(ids)}


def read_panoptic_json(path: str) -> Dict[str, Any]:
    """The content of the COCO-panoptic JSON ``path``, checked for what the loader uses.

    Raises:
        DatasetLoadError: naming the file and what it lacks: the structure of a COCO-panoptic
            JSON, "images" (id, file_name) and "categories" (id, name, isthing) entries, an
            annotation of an image not in "images" or a segment of a category not in
            "categories".
    """
    content = read_annotation_json(path, "panoptic")  # the checks shared with every loader
    if not isinstance(content.get("images"), list):
        raise DatasetLoadError(
            f"{path} has no 'images' list; a COCO-panoptic JSON names each image's file there"
        )
    require_entries(path, "images", content["images"], ("id", "file_name"), unique_ids=True)
    require_entries(path, "categories", content["categories"], ("id", "name", "isthing"), unique_ids=True)
    image_ids = {image["id"] for image in content["images"]}
    category_ids = {c["id"] for c in content["categories"]}
    for annotation in content["annotations"]:
        if annotation["image_id"] not in image_ids:
            raise DatasetLoadError(
                f"{path}: the annotation {annotation['file_name']!r} is of image_id "
                f"{annotation['image_id']!r}, which is not in 'images'"
            )
        for segment in annotation["segments_info"]:
            if not isinstance(segment, dict) or "id" not in segment or "category_id" not in segment:
                raise DatasetLoadError(
                    f"{path}: a segment of {annotation['file_name']!r} lacks 'id' or 'category_id' "
                    f"({str(segment)[:100]})"
                )
            if segment["category_id"] not in category_ids:
                raise DatasetLoadError(
                    f"{path}: segment {segment['id']} of {annotation['file_name']!r} has "
                    f"category_id {segment['category_id']}, which is not in 'categories' (ids "
                    f"{sorted(category_ids)})"
                )
    return content


def panoptic_metadata(categories: List[Dict]) -> Dict[str, Any]:
    """Mask2Former-style metadata (``panoptic_metadata_from_categories``) of categories in any
    order, sorted by id; categories without a "color" get one of detectron2's colour map."""
    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    ordered = [
        {**c, "color": c.get("color") or palette[i % len(palette)]}
        for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))
    ]
    return panoptic_metadata_from_categories(ordered)


def panoptic_semantic_labels(png: str, segments_info: List[Dict], id_map: Dict[int, int]) -> np.ndarray:
    """H x W uint8 contiguous class ids (255 = void) of the COCO-panoptic PNG ``png`` whose
    ``segments_info`` have dataset category ids."""
    segment_ids = rgb2id(read_label_file(png, "panoptic"))
    check_panoptic_segments(segment_ids, segments_info, png)
    contiguous = [{**s, "category_id": id_map[s["category_id"]]} for s in segments_info]
    return semantic_from_panoptic(segment_ids, contiguous, IGNORE_LABEL)


def load_panoptic_records(
    panoptic_json: str, panoptic_root: str, image_root: str, semantic_root: Optional[str]
) -> List[Dict]:
    """detectron2 records of a COCO-panoptic dataset: file_name (from "images"), image_id,
    height / width (when "images" has them), pan_seg_file_name, segments_info (contiguous
    category_id, isthing) and, with ``semantic_root``, sem_seg_file_name (same name as the PNG).

    Raises:
        DatasetLoadError: see :func:`read_panoptic_json`; also two images whose file names
            differ only in folder or extension (detectron2's panoptic evaluator names its
            prediction PNGs after that stem, so one would overwrite the other).
    """
    content = read_panoptic_json(panoptic_json)
    images = {image["id"]: image for image in content["images"]}
    id_map = contiguous_ids(content["categories"])
    things = {c["id"] for c in content["categories"] if c["isthing"]}
    records, stems = [], {}
    for annotation in content["annotations"]:
        image = images[annotation["image_id"]]
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        if stems.setdefault(stem, image["file_name"]) != image["file_name"]:
            raise DatasetLoadError(
                f"{panoptic_json}: images {stems[stem]!r} and {image['file_name']!r} have the same "
                f"name {stem!r} without folder and extension; the panoptic evaluator names its "
                "predictions after it, so rename one of them"
            )
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "image_id": annotation["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
            "segments_info": [
                {
                    **segment,
                    "category_id": id_map[segment["category_id"]],
                    "isthing": segment["category_id"] in things,
                }
                for segment in annotation["segments_info"]
            ],
        }
        for key in ("height", "width"):
            if key in image:
                record[key] = image[key]
        if semantic_root is not None:
            record["sem_seg_file_name"] = os.path.join(semantic_root, annotation["file_name"])
        records.append(record)
    return records


# ---------------------------------------------------------------------------- derived files


def derived_semantic_root(panoptic_root: str) -> str:
    """Where the semantic PNGs of the panoptic PNG folder ``panoptic_root`` are derived."""
    return os.path.normpath(panoptic_root) + "_semseg"


def derived_instances_json(panoptic_root: str) -> str:
    """Where the instance JSON of the panoptic PNG folder ``panoptic_root`` is derived."""
    return os.path.join(os.path.normpath(panoptic_root) + "_instances", "instances.json")


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (what the derived files record of their source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _derive_once(
    directory: str, panoptic_json: str, json_sha256: str, what: str, build: Callable[[str], None]
) -> None:
    """Build ``directory`` with ``build`` unless it was derived from this ``panoptic_json`` (whose
    SHA-256 is ``json_sha256``)."""
    manifest = {"derived": what, "from_sha256": json_sha256, "version": _VERSION}
    found = read_marker(directory)
    if os.path.exists(directory) and not found:
        raise DatasetLoadError(
            f"{directory} exists but was not derived by hcformer (it has no COMPLETE.json); it "
            f"is where the {what} of {panoptic_json} go. Move it away, or, if it holds them "
            "already, name it in the dataset's config entry"
        )
    if found and found != manifest:
        raise DatasetLoadError(
            f"{directory} holds {what} derived from another version of {panoptic_json} (the "
            "file has changed since); delete the folder to derive them again"
        )
    if not found:
        logger.info(f"Deriving the {what} of {panoptic_json} into {directory}")
    build_directory_once(directory, build, manifest)


def ensure_derived_files(panoptic_json: str, panoptic_root: str, semantic_pngs: bool = True) -> None:
    """Derive, unless done already, the COCO instance JSON (thing segments as RLE masks,
    :func:`derived_instances_json`) of a COCO-panoptic dataset and, with ``semantic_pngs``, its
    semantic PNGs (:func:`derived_semantic_root`)."""
    json_sha256 = file_sha256(panoptic_json)  # once for both folders: the JSON may be large
    instances_json = derived_instances_json(panoptic_root)

    def build_semantic_pngs(tmp_dir: str) -> None:
        content = read_panoptic_json(panoptic_json)
        id_map = contiguous_ids(content["categories"])
        for annotation in tqdm(content["annotations"], desc="semantic PNGs", unit="image"):
            png = os.path.join(panoptic_root, annotation["file_name"])
            labels = panoptic_semantic_labels(png, annotation["segments_info"], id_map)
            output = os.path.join(tmp_dir, annotation["file_name"])
            os.makedirs(os.path.dirname(output), exist_ok=True)
            Image.fromarray(labels).save(output)

    def build_instances_json(tmp_dir: str) -> None:
        content = read_panoptic_json(panoptic_json)
        things = {c["id"] for c in content["categories"] if c["isthing"]}
        images = {image["id"]: image for image in content["images"]}
        image_entries, annotations = [], []
        for annotation in tqdm(content["annotations"], desc="instance masks", unit="image"):
            png = os.path.join(panoptic_root, annotation["file_name"])
            segment_ids = rgb2id(read_label_file(png, "panoptic"))
            check_panoptic_segments(segment_ids, annotation["segments_info"], png)
            image = images[annotation["image_id"]]
            height, width = segment_ids.shape
            image_entries.append(
                {"id": image["id"], "file_name": image["file_name"], "height": height, "width": width}
            )
            for segment in annotation["segments_info"]:
                mask = segment_ids == segment["id"]
                if segment["category_id"] not in things or not mask.any():
                    continue
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image["id"],
                        "category_id": segment["category_id"],
                        "segmentation": rle,
                        "area": int(mask.sum()),
                        "bbox": mask_util.toBbox(rle).tolist(),
                        "iscrowd": int(segment.get("iscrowd", 0)),
                    }
                )
        derived = {
            "info": {"description": f"thing segments of {os.path.basename(panoptic_json)}"},
            "images": image_entries,
            "annotations": annotations,
            "categories": [c for c in content["categories"] if c["isthing"]],
        }
        with open(os.path.join(tmp_dir, os.path.basename(instances_json)), "w") as f:
            json.dump(derived, f)

    if semantic_pngs:
        semantic_root = derived_semantic_root(panoptic_root)
        _derive_once(semantic_root, panoptic_json, json_sha256, "semantic PNGs", build_semantic_pngs)
    instances_dir = os.path.dirname(instances_json)
    _derive_once(instances_dir, panoptic_json, json_sha256, "instance JSON", build_instances_json)

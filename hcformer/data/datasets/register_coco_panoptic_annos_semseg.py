"""COCO panoptic segmentation with semantic labels: ``coco_2017_{train,val}_panoptic_with_sem_seg``.

Mask2Former's convention: every record of detectron2's standard COCO panoptic loader gets a
``sem_seg_file_name`` (a PNG of contiguous class ids over *all* categories, 255 = unlabeled,
made by ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``), so one dataset serves
PQ, mIoU and (through the instance json) mask AP. In the metadata, ``stuff_classes`` lists all
categories and both id maps point into that list, so things and stuff share one contiguous space.

Expected layout under ``$DETECTRON2_DATASETS``::

    coco/{train,val}2017/                        images (also used by detectron2's coco_2017_*)
    coco/annotations/panoptic_{train,val}2017.json
    coco/annotations/instances_{train,val}2017.json
    coco/panoptic_{train,val}2017/               panoptic PNGs
    coco/panoptic_semseg_{train,val}2017/        made by the prepare script
"""

import logging
import os
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .catalog_utils import require_paths, run_before_loading, wrap_dataset_loader

__all__ = [
    "panoptic_metadata_from_categories",
    "register_coco_panoptic_with_sem_seg",
    "register_all_coco_panoptic_annos_sem_seg",
]

logger = logging.getLogger(__name__)

# name: (images, instances json, panoptic PNGs, panoptic json, semantic PNGs), under the root
_PREDEFINED_SPLITS = {
    "coco_2017_train_panoptic_with_sem_seg": (
        "coco/train2017",
        "coco/annotations/instances_train2017.json",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
    ),
    "coco_2017_val_panoptic_with_sem_seg": (
        "coco/val2017",
        "coco/annotations/instances_val2017.json",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
    ),
}


def panoptic_metadata_from_categories(categories: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mask2Former-style panoptic metadata from COCO-panoptic ``categories`` (id, name, isthing,
    color). Contiguous id = position in ``categories``, for things and stuff alike."""
    return {
        "thing_classes": [c["name"] for c in categories if c["isthing"]],
        "thing_colors": [c["color"] for c in categories if c["isthing"]],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def register_coco_panoptic_with_sem_seg(
    name: str,
    metadata: Dict[str, Any],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: Optional[str],
) -> None:
    """Register ``name`` with detectron2's ``register_coco_panoptic`` and add a
    ``sem_seg_file_name`` (``sem_seg_root``/<panoptic PNG name>) to each record.

    Args:
        metadata: as returned by :func:`panoptic_metadata_from_categories`.
    """
    # Sets panoptic_root, image_root, panoptic_json, json_file, evaluator_type
    # "coco_panoptic_seg", ignore_label 255 and label_divisor 1000, like any COCO panoptic set.
    register_coco_panoptic(name, metadata, image_root, panoptic_root, panoptic_json, instances_json)
    MetadataCatalog.get(name).set(sem_seg_root=sem_seg_root)

    def add_sem_seg(load_panoptic):
        def load() -> List[Dict]:
            records = load_panoptic()
            for record in records:
                png_name = os.path.basename(record["pan_seg_file_name"])
                record["sem_seg_file_name"] = os.path.join(sem_seg_root, png_name)
            return records

        return load

    wrap_dataset_loader(name, add_sem_seg)


def register_all_coco_panoptic_annos_sem_seg(root: str) -> None:
    """Register the COCO 2017 ``*_panoptic_with_sem_seg`` datasets under ``root``."""
    metadata = panoptic_metadata_from_categories(COCO_CATEGORIES)
    for name, relative_paths in _PREDEFINED_SPLITS.items():
        if name in DatasetCatalog:  # e.g. registered by Mask2Former in the same process
            logger.info(f"Dataset {name} is already registered; keeping that registration")
            continue
        paths = [os.path.join(root, p) for p in relative_paths]

        def check(name=name, paths=paths):
            require_paths(
                name,
                paths,
                "Download COCO 2017 images with panoptic and instance annotations, then run "
                "datasets/prepare_coco_semantic_annos_from_panoptic_annos.py.",
            )

        image_root, instances_json, panoptic_root, panoptic_json, sem_seg_root = paths
        register_coco_panoptic_with_sem_seg(
            name, metadata, image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json
        )
        run_before_loading(name, check)


register_all_coco_panoptic_annos_sem_seg(
    os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
)

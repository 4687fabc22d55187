"""``mask_former_instance``: training mapper for COCO-style instance records (MaskFormer recipe).

Augmentation: ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN, ...), then if INPUT.CROP.ENABLED a plain
RandomCrop(INPUT.CROP.TYPE, INPUT.CROP.SIZE), then the INPUT.RANDOM_FLIP flip; image and masks
are padded to INPUT.SIZE_DIVISIBILITY (when > 0). Crowd annotations are dropped; polygons and
RLE masks are both accepted (polygons are rasterized after the transforms, see ``annotation_mask``).
"""

from typing import Any, Dict, List

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..checks import check_category_ids, check_rle_sizes
from .mapper_utils import build_flip, masks_to_instances
from .segmentation_dataset_mapper import SegmentationDatasetMapper

__all__ = ["MaskFormerInstanceDatasetMapper", "annotation_mask"]


def annotation_mask(segmentation, transforms: T.TransformList, image_size) -> np.ndarray:
    """H x W bool mask of a COCO polygon list or RLE, transformed like the image (``image_size``).

    Polygons are moved point by point and rasterized at the final size, which clips them to the
    image: detectron2's ``transform_instance_annotations`` clips them to a crop with shapely, an
    optional package we do not need otherwise. RLE masks are decoded and transformed as labels.
    """
    if isinstance(segmentation, list):
        polygons = [
            transforms.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1)
            for p in segmentation
        ]
        return utils.polygons_to_bitmask(polygons, *image_size)
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        mask = transforms.apply_segmentation(mask_util.decode(segmentation))
        return mask.astype(bool)
    raise TypeError(
        f"segmentation of type {type(segmentation).__name__}: expected polygons (list) or RLE (dict)"
    )


class MaskFormerInstanceDatasetMapper(SegmentationDatasetMapper):
    """Map a record with ``file_name`` and ``annotations`` (contiguous category ids) to model
    inputs. Output keys: image, height, width, instances (gt_classes, gt_masks, gt_boxes)."""

    required_keys = ("file_name", "annotations")

    @classmethod
    def build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
        augmentations = [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        ]
        if cfg.INPUT.CROP.ENABLED:
            augmentations.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return augmentations + build_flip(cfg)

    def read_labels(self, dataset_dict: Dict, image: np.ndarray) -> Dict[str, Any]:
        annotations = dataset_dict.pop("annotations")
        file_name = dataset_dict["file_name"]
        categories = [obj["category_id"] for obj in annotations]
        check_category_ids(categories, self.num_classes, f"annotations of {file_name}")
        check_rle_sizes(annotations, image.shape[:2], file_name)
        annotations = [obj for obj in annotations if obj.get("iscrowd", 0) == 0]  # crowd: no target
        for obj in annotations:
            if "segmentation" not in obj:
                raise KeyError(
                    f"Instance annotation {obj} has no 'segmentation'; mask targets need masks"
                )
        return {"annotations": annotations}

    def targets(self, labels: Dict[str, Any], aug_input: T.AugInput, transforms) -> Dict[str, Any]:
        image_size = aug_input.image.shape[:2]
        annotations = labels["annotations"]
        masks = [annotation_mask(obj["segmentation"], transforms, image_size) for obj in annotations]
        masks = [self.pad(torch.from_numpy(mask), 0) for mask in masks]
        classes = [int(obj["category_id"]) for obj in annotations]
        padded_size = self.padded_size(*image_size)
        return {"instances": masks_to_instances(padded_size, classes, masks, with_boxes=True)}

"""``coco_instance_lsj``: training mapper for COCO instance records with large-scale jittering.

Augmentation (Mask2Former's COCO recipe): the INPUT.RANDOM_FLIP flip, ResizeScale to a random
fraction in [INPUT.MIN_SCALE, INPUT.MAX_SCALE] of INPUT.IMAGE_SIZE (keeping the aspect ratio),
then FixedSizeCrop to INPUT.IMAGE_SIZE squared (random crop when larger, grey padding when
smaller). Crowd annotations are dropped; polygons and RLE masks are both accepted.
"""

import copy
from typing import Dict, List, Optional

from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from ..image_reading import check_record_size, read_image_file
from .mapper_utils import (
    IMAGE_PAD_VALUE,
    build_flip,
    check_category_ids,
    image_to_tensor,
    masks_to_instances,
    require_keys,
    require_training,
)
from .mask_former_instance_dataset_mapper import annotations_to_mask_targets, check_rle_sizes

__all__ = ["COCOInstanceLSJDatasetMapper", "build_lsj_augmentations"]


def build_lsj_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """Flip + ResizeScale + FixedSizeCrop, shared by both LSJ mappers."""
    size = cfg.INPUT.IMAGE_SIZE
    return build_flip(cfg) + [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE,
            max_scale=cfg.INPUT.MAX_SCALE,
            target_height=size,
            target_width=size,
        ),
        T.FixedSizeCrop(crop_size=(size, size), pad_value=IMAGE_PAD_VALUE),
    ]


class COCOInstanceLSJDatasetMapper:
    """Map a record with ``file_name`` and ``annotations`` (contiguous category ids) to model
    inputs of INPUT.IMAGE_SIZE squared. Output keys: image, height, width,
    instances (gt_classes, gt_masks, gt_boxes)."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        max_image_pixels: int = 0,
        num_classes: Optional[int] = None,
    ):
        """``max_image_pixels`` / ``num_classes``: as in MaskFormerSemanticDatasetMapper."""
        require_training(is_train, type(self).__name__)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.max_image_pixels = max_image_pixels
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "max_image_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        require_keys(dataset_dict, ["file_name", "annotations"], type(self).__name__)
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format, self.max_image_pixels)
        check_record_size(dataset_dict, image)  # also fills in "height" / "width"
        check_category_ids(
            [obj["category_id"] for obj in dataset_dict["annotations"]],
            self.num_classes,
            f"annotations of {dataset_dict['file_name']}",
        )
        check_rle_sizes(dataset_dict["annotations"], image.shape[:2], dataset_dict["file_name"])

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        classes, masks = annotations_to_mask_targets(
            dataset_dict.pop("annotations"), transforms, image.shape[:2]
        )
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["instances"] = masks_to_instances(
            image.shape[:2], classes, masks, with_boxes=True
        )
        return dataset_dict

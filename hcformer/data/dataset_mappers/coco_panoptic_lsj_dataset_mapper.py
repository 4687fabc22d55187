"""``coco_panoptic_lsj``: training mapper for COCO panoptic records with large-scale jittering.

Same augmentation as ``coco_instance_lsj`` (flip, ResizeScale, FixedSizeCrop to
INPUT.IMAGE_SIZE). Every non-crowd segment becomes one mask target (with a box, as in
Mask2Former); padded pixels are void. ``sem_seg`` is derived from the augmented panoptic map.
"""

import copy
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from .coco_instance_lsj_dataset_mapper import build_lsj_augmentations
from ..image_reading import check_record_size, check_same_size, read_image_file, read_label_file
from .mapper_utils import (
    check_category_ids,
    check_panoptic_segments,
    image_to_tensor,
    require_keys,
    require_training,
    rgb_to_panoptic_id,
    semantic_from_panoptic,
    train_ignore_label,
)
from .mask_former_panoptic_dataset_mapper import panoptic_instances

__all__ = ["COCOPanopticLSJDatasetMapper"]


class COCOPanopticLSJDatasetMapper:
    """Map a record with ``file_name``, ``pan_seg_file_name`` and ``segments_info`` (contiguous
    category ids) to model inputs of INPUT.IMAGE_SIZE squared.

    Output keys: image, height, width, sem_seg, instances (gt_classes, gt_masks, gt_boxes).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        max_image_pixels: int = 0,
        num_classes: Optional[int] = None,
    ):
        """``max_image_pixels`` / ``num_classes``: as in MaskFormerSemanticDatasetMapper."""
        require_training(is_train, type(self).__name__)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.max_image_pixels = max_image_pixels
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": train_ignore_label(cfg),
            "max_image_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        require_keys(
            dataset_dict, ["file_name", "pan_seg_file_name", "segments_info"], type(self).__name__
        )
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format, self.max_image_pixels)
        check_record_size(dataset_dict, image)  # also fills in "height" / "width"
        label_file = dataset_dict.pop("pan_seg_file_name")
        panoptic_rgb = read_label_file(label_file, "panoptic", self.max_image_pixels)
        check_same_size(image, panoptic_rgb, dataset_dict["file_name"], label_file)
        segments_info = dataset_dict.pop("segments_info")
        check_category_ids(
            [s["category_id"] for s in segments_info], self.num_classes, f"segments_info of {label_file}"
        )
        check_panoptic_segments(rgb_to_panoptic_id(panoptic_rgb), segments_info, label_file)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        # The panoptic PNG is transformed as an RGB uint8 label image (nearest resizing keeps
        # the 8-bit channels exact); FixedSizeCrop pads labels with 0, the void segment id.
        panoptic_ids = rgb_to_panoptic_id(transforms.apply_segmentation(panoptic_rgb))
        dataset_dict.pop("sem_seg_file_name", None)

        dataset_dict["image"] = image_to_tensor(aug_input.image)
        sem_seg = semantic_from_panoptic(panoptic_ids, segments_info, self.ignore_label)
        dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("int64"))
        dataset_dict["instances"] = panoptic_instances(
            torch.as_tensor(panoptic_ids), segments_info, with_boxes=True
        )
        return dataset_dict

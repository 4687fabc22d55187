"""``mask_former_semantic``: training mapper for semantic segmentation (MaskFormer recipe).

Augmentation: ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING),
then if INPUT.CROP.ENABLED a random crop in which no class covers more than
INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, then SSD colour jitter if INPUT.COLOR_AUG_SSD, then the
INPUT.RANDOM_FLIP flip. Image and labels are padded to INPUT.SIZE_DIVISIBILITY (when > 0) with
grey / ignore. Each class present becomes one mask target.
"""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from ..color_aug_ssd import ColorAugSSD
from ..image_reading import check_record_size, check_same_size, read_image_file, read_label_file
from .mapper_utils import (
    build_flip,
    check_category_ids,
    image_to_tensor,
    pad_to_multiple,
    require_keys,
    require_training,
    semantic_to_instances,
    train_ignore_label,
)

__all__ = ["MaskFormerSemanticDatasetMapper", "build_semantic_augmentations"]


def build_semantic_augmentations(cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
    """The augmentation list shared by the semantic and panoptic MaskFormer mappers."""
    augmentations = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augmentations.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                ignore_label,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augmentations.append(ColorAugSSD(cfg.INPUT.FORMAT))
    return augmentations + build_flip(cfg)


def read_label_map(file_name: str, max_pixels: int = 0) -> np.ndarray:
    """A single-channel PNG of class ids. uint8 stays uint8 (fast PIL resizing); anything else
    becomes float64, which detectron2's transforms resize with nearest-neighbour too."""
    return read_label_file(file_name, "semantic", max_pixels)


class MaskFormerSemanticDatasetMapper:
    """Map a record with ``file_name`` and ``sem_seg_file_name`` to model inputs.

    Output keys: image, height, width, sem_seg, instances (gt_classes, gt_masks); see
    ``mapper_utils`` for shapes and dtypes.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        max_image_pixels: int = 0,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            max_image_pixels: refuse larger images (INPUT.MAX_IMAGE_PIXELS; 0: no limit).
            num_classes: refuse labels outside 0..num_classes-1 and the ignore label
                (MODEL.SEM_SEG_HEAD.NUM_CLASSES; None: no check).
        """
        require_training(is_train, type(self).__name__)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.max_image_pixels = max_image_pixels
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ignore_label = train_ignore_label(cfg)
        return {
            "is_train": is_train,
            "augmentations": build_semantic_augmentations(cfg, ignore_label),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "max_image_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        name = type(self).__name__
        require_keys(dataset_dict, ["file_name", "sem_seg_file_name"], name)
        if "annotations" in dataset_dict:
            raise ValueError(
                f"{name} maps semantic segmentation records, but the record of "
                f"{dataset_dict['file_name']!r} has instance 'annotations'; use an instance mapper"
            )
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format, self.max_image_pixels)
        check_record_size(dataset_dict, image)  # also fills in "height" / "width"
        label_file = dataset_dict.pop("sem_seg_file_name")
        sem_seg = read_label_map(label_file, self.max_image_pixels)
        check_same_size(image, sem_seg, dataset_dict["file_name"], label_file)
        check_category_ids(np.unique(sem_seg), self.num_classes, label_file, self.ignore_label)

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image_tensor = image_to_tensor(aug_input.image)
        sem_seg_tensor = torch.as_tensor(aug_input.sem_seg.astype(np.int64))

        image_tensor, labels = pad_to_multiple(
            image_tensor,
            {"sem_seg": sem_seg_tensor},
            {"sem_seg": self.ignore_label},
            self.size_divisibility,
        )
        dataset_dict["image"] = image_tensor
        dataset_dict["sem_seg"] = labels["sem_seg"]
        dataset_dict["instances"] = semantic_to_instances(labels["sem_seg"], self.ignore_label)
        return dataset_dict

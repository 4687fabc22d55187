"""``mask_former_semantic``: training mapper for semantic segmentation (MaskFormer recipe).

Augmentation: ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING),
then if INPUT.CROP.ENABLED a random crop in which no class covers more than
INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, then SSD colour jitter if INPUT.COLOR_AUG_SSD, then the
INPUT.RANDOM_FLIP flip. Image and labels are padded to INPUT.SIZE_DIVISIBILITY (when > 0) with
grey / ignore. Each class present becomes one mask target.
"""

import copy
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..color_aug_ssd import ColorAugSSD
from .mapper_utils import (
    build_flip,
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


def read_label_map(file_name: str) -> np.ndarray:
    """A PNG of class ids. uint8 stays uint8 (fast PIL resizing); anything else becomes float64,
    which detectron2's transforms resize with nearest-neighbour too."""
    labels = utils.read_image(file_name)
    return labels if labels.dtype == np.uint8 else labels.astype(np.float64)


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
    ):
        require_training(is_train, type(self).__name__)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ignore_label = train_ignore_label(cfg)
        return {
            "is_train": is_train,
            "augmentations": build_semantic_augmentations(cfg, ignore_label),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
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
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)  # also fills in "height" / "width"
        sem_seg = read_label_map(dataset_dict.pop("sem_seg_file_name"))

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

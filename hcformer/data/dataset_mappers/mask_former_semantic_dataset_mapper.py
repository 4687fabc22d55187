"""``mask_former_semantic``: training mapper for semantic segmentation (MaskFormer recipe).

Augmentation: ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING),
then if INPUT.CROP.ENABLED a random crop in which no class covers more than
INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, then SSD colour jitter if INPUT.COLOR_AUG_SSD, then the
INPUT.RANDOM_FLIP flip. Image and labels are padded to INPUT.SIZE_DIVISIBILITY (when > 0) with
grey / ignore. Each class present becomes one mask target.
"""

from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from ..color_aug_ssd import ColorAugSSD
from ..checks import check_category_ids, check_same_size
from ..image_reading import read_label_file
from .mapper_utils import build_flip, semantic_to_instances
from .segmentation_dataset_mapper import SegmentationDatasetMapper

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


class MaskFormerSemanticDatasetMapper(SegmentationDatasetMapper):
    """Map a record with ``file_name`` and ``sem_seg_file_name`` to model inputs.

    Output keys: image, height, width, sem_seg, instances (gt_classes, gt_masks); see
    ``mapper_utils`` for shapes and dtypes.
    """

    required_keys = ("file_name", "sem_seg_file_name")

    @classmethod
    def build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
        return build_semantic_augmentations(cfg, ignore_label)

    def check_record(self, dataset_dict: Dict) -> None:
        super().check_record(dataset_dict)
        if "annotations" in dataset_dict:
            raise ValueError(
                f"{type(self).__name__} maps semantic segmentation records, but the record of "
                f"{dataset_dict['file_name']!r} has instance 'annotations'; use an instance mapper"
            )

    def read_labels(self, dataset_dict: Dict, image: np.ndarray) -> Dict[str, Any]:
        # a single-channel PNG of class ids: uint8 stays uint8 (fast PIL resizing), anything
        # else becomes float64, which detectron2's transforms resize nearest-neighbour too
        label_file = dataset_dict.pop("sem_seg_file_name")
        sem_seg = read_label_file(label_file, "semantic", self.max_image_pixels)
        check_same_size(image, sem_seg, dataset_dict["file_name"], label_file)
        check_category_ids(np.unique(sem_seg), self.num_classes, label_file, self.ignore_label)
        return {"sem_seg": sem_seg}

    def targets(self, labels: Dict[str, Any], aug_input: T.AugInput, transforms) -> Dict[str, Any]:
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        sem_seg = self.pad(sem_seg, self.ignore_label)
        return {"sem_seg": sem_seg, "instances": semantic_to_instances(sem_seg, self.ignore_label)}

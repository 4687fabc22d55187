"""``coco_panoptic_lsj``: training mapper for COCO panoptic records with large-scale jittering.

Same augmentation as ``coco_instance_lsj`` (flip, ResizeScale, FixedSizeCrop to
INPUT.IMAGE_SIZE). Every non-crowd segment becomes one mask target (with a box, as in
Mask2Former); padded pixels are void. ``sem_seg`` is derived from the augmented panoptic map.
"""

from typing import Any, Dict

import numpy as np
import torch
from detectron2.data import transforms as T
from panopticapi.utils import rgb2id

from .coco_instance_lsj_dataset_mapper import LargeScaleJitter
from .mapper_utils import semantic_from_panoptic
from .mask_former_panoptic_dataset_mapper import (
    PANOPTIC_KEYS,
    panoptic_instances,
    read_panoptic_labels,
)
from .segmentation_dataset_mapper import SegmentationDatasetMapper

__all__ = ["COCOPanopticLSJDatasetMapper"]


class COCOPanopticLSJDatasetMapper(LargeScaleJitter, SegmentationDatasetMapper):
    """Map a record with ``file_name``, ``pan_seg_file_name`` and ``segments_info`` (contiguous
    category ids) to model inputs of INPUT.IMAGE_SIZE squared.

    Output keys: image, height, width, sem_seg, instances (gt_classes, gt_masks, gt_boxes).
    """

    required_keys = PANOPTIC_KEYS

    def read_labels(self, dataset_dict: Dict, image: np.ndarray) -> Dict[str, Any]:
        return read_panoptic_labels(dataset_dict, image, self.max_image_pixels, self.num_classes)

    def targets(self, labels: Dict[str, Any], aug_input: T.AugInput, transforms) -> Dict[str, Any]:
        # The panoptic PNG is transformed as an RGB uint8 label image (nearest resizing keeps
        # the 8-bit channels exact); FixedSizeCrop pads labels with 0, the void segment id.
        panoptic_ids = rgb2id(transforms.apply_segmentation(labels["panoptic"]))
        sem_seg = semantic_from_panoptic(panoptic_ids, labels["segments_info"], self.ignore_label)
        return {
            "sem_seg": torch.as_tensor(sem_seg.astype(np.int64)),
            "instances": panoptic_instances(
                torch.as_tensor(panoptic_ids), labels["segments_info"], with_boxes=True
            ),
        }

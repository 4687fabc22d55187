"""``mask_former_panoptic``: training mapper for COCO-style panoptic records (MaskFormer recipe).

Same augmentation as ``mask_former_semantic`` (resize, category-area-constrained crop, SSD colour
jitter, flip, padding). Every non-crowd segment becomes one mask target; crowd segments give no
target (their pixels still carry their class in ``sem_seg``, as in Mask2Former's
``panoptic_semseg`` PNGs). ``sem_seg`` is derived from the panoptic PNG and the record's
``segments_info`` instead of read from ``sem_seg_file_name``: the content is identical and it
also works for records without semantic PNGs.
"""

import copy
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import transforms as T

from ..image_reading import check_record_size, check_same_size, read_image_file, read_label_file
from .mapper_utils import (
    check_category_ids,
    check_panoptic_segments,
    image_to_tensor,
    masks_to_instances,
    pad_to_multiple,
    require_keys,
    rgb_to_panoptic_id,
    semantic_from_panoptic,
)
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = ["MaskFormerPanopticDatasetMapper", "panoptic_instances"]


def panoptic_instances(panoptic_ids: torch.Tensor, segments_info: List[Dict], with_boxes: bool):
    """Targets of the non-crowd segments of a panoptic id map (H x W int64 tensor)."""
    segments = [s for s in segments_info if not s.get("iscrowd", 0)]
    classes = [int(s["category_id"]) for s in segments]
    masks = torch.stack([panoptic_ids == s["id"] for s in segments]) if segments else None
    return masks_to_instances(tuple(panoptic_ids.shape), classes, masks, with_boxes)


class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """Map a record with ``file_name``, ``pan_seg_file_name`` and ``segments_info`` (contiguous
    category ids, as detectron2's COCO panoptic loader gives) to model inputs.

    Output keys: image, height, width, sem_seg, instances (gt_classes, gt_masks). The
    configuration (augmentations, padding, ignore label) is the semantic mapper's.
    """

    def __call__(self, dataset_dict: Dict) -> Dict:
        require_keys(
            dataset_dict, ["file_name", "pan_seg_file_name", "segments_info"], type(self).__name__
        )
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format, self.max_image_pixels)
        check_record_size(dataset_dict, image)  # also fills in "height" / "width"
        # Augment the panoptic PNG as an RGB uint8 image: detectron2 resizes uint8 images with
        # PIL (nearest for labels), and 8-bit channels survive that exactly.
        label_file = dataset_dict.pop("pan_seg_file_name")
        panoptic_rgb = read_label_file(label_file, "panoptic", self.max_image_pixels)
        check_same_size(image, panoptic_rgb, dataset_dict["file_name"], label_file)
        segments_info = dataset_dict.pop("segments_info")
        check_category_ids(
            [s["category_id"] for s in segments_info], self.num_classes, f"segments_info of {label_file}"
        )
        dataset_dict.pop("sem_seg_file_name", None)
        original_ids = rgb_to_panoptic_id(panoptic_rgb)
        check_panoptic_segments(original_ids, segments_info, label_file)
        sem_seg = semantic_from_panoptic(original_ids, segments_info, self.ignore_label)

        aug_input = T.AugInput(image, sem_seg=sem_seg)  # sem_seg drives the crop constraint
        transforms = self.augmentations(aug_input)
        panoptic_ids = torch.as_tensor(
            rgb_to_panoptic_id(transforms.apply_segmentation(panoptic_rgb))
        )
        image_tensor, labels = pad_to_multiple(
            image_to_tensor(aug_input.image),
            {
                "sem_seg": torch.as_tensor(aug_input.sem_seg.astype(np.int64)),
                "panoptic": panoptic_ids,
            },
            {"sem_seg": self.ignore_label, "panoptic": 0},  # 0 = void segment id
            self.size_divisibility,
        )
        dataset_dict["image"] = image_tensor
        dataset_dict["sem_seg"] = labels["sem_seg"]
        dataset_dict["instances"] = panoptic_instances(
            labels["panoptic"], segments_info, with_boxes=False
        )
        return dataset_dict

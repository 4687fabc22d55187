"""``mask_former_panoptic``: training mapper for COCO-style panoptic records (MaskFormer recipe).

Same augmentation as ``mask_former_semantic`` (resize, category-area-constrained crop, SSD colour
jitter, flip, padding). Every non-crowd segment becomes one mask target; crowd segments give no
target (their pixels still carry their class in ``sem_seg``, as in Mask2Former's
``panoptic_semseg`` PNGs). ``sem_seg`` is derived from the panoptic PNG and the record's
``segments_info`` instead of read from ``sem_seg_file_name``: the content is identical and it
also works for records without semantic PNGs.
"""

from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from panopticapi.utils import rgb2id

from ..checks import check_category_ids, check_panoptic_segments, check_same_size
from ..image_reading import read_label_file
from .mapper_utils import masks_to_instances, semantic_from_panoptic
from .mask_former_semantic_dataset_mapper import build_semantic_augmentations
from .segmentation_dataset_mapper import SegmentationDatasetMapper

__all__ = ["MaskFormerPanopticDatasetMapper", "panoptic_instances", "read_panoptic_labels"]

PANOPTIC_KEYS = ("file_name", "pan_seg_file_name", "segments_info")


def read_panoptic_labels(
    dataset_dict: Dict, image: np.ndarray, max_image_pixels: int, num_classes
) -> Dict[str, Any]:
    """Pop and check the panoptic labels of a record: ``panoptic`` (the PNG as H x W x 3 uint8),
    its ``panoptic_ids`` (H x W ints) and ``segments_info``. Shared by both panoptic mappers."""
    label_file = dataset_dict.pop("pan_seg_file_name")
    panoptic_rgb = read_label_file(label_file, "panoptic", max_image_pixels)
    check_same_size(image, panoptic_rgb, dataset_dict["file_name"], label_file)
    segments_info = dataset_dict.pop("segments_info")
    check_category_ids(
        [s["category_id"] for s in segments_info], num_classes, f"segments_info of {label_file}"
    )
    dataset_dict.pop("sem_seg_file_name", None)
    panoptic_ids = rgb2id(panoptic_rgb)
    check_panoptic_segments(panoptic_ids, segments_info, label_file)
    return {"panoptic": panoptic_rgb, "panoptic_ids": panoptic_ids, "segments_info": segments_info}


def panoptic_instances(panoptic_ids: torch.Tensor, segments_info: List[Dict], with_boxes: bool):
    """Targets of the non-crowd segments of a panoptic id map (H x W int tensor)."""
    segments = [s for s in segments_info if not s.get("iscrowd", 0)]
    classes = [int(s["category_id"]) for s in segments]
    masks = [panoptic_ids == s["id"] for s in segments]
    return masks_to_instances(tuple(panoptic_ids.shape), classes, masks, with_boxes)


class MaskFormerPanopticDatasetMapper(SegmentationDatasetMapper):
    """Map a record with ``file_name``, ``pan_seg_file_name`` and ``segments_info`` (contiguous
    category ids, as detectron2's COCO panoptic loader gives) to model inputs.

    Output keys: image, height, width, sem_seg, instances (gt_classes, gt_masks). The
    configuration (augmentations, padding, ignore label) is the semantic mapper's.
    """

    required_keys = PANOPTIC_KEYS

    @classmethod
    def build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
        return build_semantic_augmentations(cfg, ignore_label)

    def read_labels(self, dataset_dict: Dict, image: np.ndarray) -> Dict[str, Any]:
        labels = read_panoptic_labels(dataset_dict, image, self.max_image_pixels, self.num_classes)
        labels["sem_seg"] = semantic_from_panoptic(
            labels["panoptic_ids"], labels["segments_info"], self.ignore_label
        )
        return labels

    def targets(self, labels: Dict[str, Any], aug_input: T.AugInput, transforms) -> Dict[str, Any]:
        # The panoptic PNG is augmented as an RGB uint8 image: detectron2 resizes uint8 images
        # with PIL (nearest for labels), and 8-bit channels survive that exactly.
        panoptic_ids = torch.as_tensor(rgb2id(transforms.apply_segmentation(labels["panoptic"])))
        panoptic_ids = self.pad(panoptic_ids, 0)  # 0 = void segment id
        sem_seg = self.pad(torch.as_tensor(aug_input.sem_seg.astype(np.int64)), self.ignore_label)
        instances = panoptic_instances(panoptic_ids, labels["segments_info"], with_boxes=False)
        return {"sem_seg": sem_seg, "instances": instances}

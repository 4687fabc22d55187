"""``coco_instance_lsj``: training mapper for COCO instance records with large-scale jittering.

Augmentation (Mask2Former's COCO recipe): the INPUT.RANDOM_FLIP flip, ResizeScale to a random
fraction in [INPUT.MIN_SCALE, INPUT.MAX_SCALE] of INPUT.IMAGE_SIZE (keeping the aspect ratio),
then FixedSizeCrop to INPUT.IMAGE_SIZE squared (random crop when larger, grey padding when
smaller). Crowd annotations are dropped; polygons and RLE masks are both accepted.
"""

from typing import Dict, List

from detectron2.config import CfgNode
from detectron2.data import transforms as T

from .mapper_utils import IMAGE_PAD_VALUE, build_flip
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper

__all__ = ["COCOInstanceLSJDatasetMapper", "LargeScaleJitter"]


class LargeScaleJitter:
    """What both LSJ mappers add to their MaskFormer base (list it first among the bases):
    flip + ResizeScale + FixedSizeCrop, and no SIZE_DIVISIBILITY padding (the crop pads to
    INPUT.IMAGE_SIZE already)."""

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        args = super().from_config(cfg, is_train)
        args["size_divisibility"] = 0
        return args

    @classmethod
    def build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
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


class COCOInstanceLSJDatasetMapper(LargeScaleJitter, MaskFormerInstanceDatasetMapper):
    """Map a record with ``file_name`` and ``annotations`` (contiguous category ids) to model
    inputs of INPUT.IMAGE_SIZE squared. Output keys: image, height, width,
    instances (gt_classes, gt_masks, gt_boxes)."""

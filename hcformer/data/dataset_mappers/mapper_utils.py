"""Pieces shared by the training dataset mappers.

Output conventions of every mapper (what the model reads):

* ``image``: uint8 tensor C x H x W in ``cfg.INPUT.FORMAT`` channel order;
* ``height`` / ``width``: size of the original image (for resizing predictions back);
* ``instances``: :class:`Instances` of the (augmented, padded) image size with ``gt_classes``
  (int64 contiguous ids) and ``gt_masks`` (bool tensor N x H x W; no empty masks);
  instance mappers also set ``gt_boxes`` (:class:`Boxes`, tight around the masks);
* ``sem_seg``: int64 tensor H x W, ``ignore_label`` where unlabeled or padded.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

__all__ = [
    "IMAGE_PAD_VALUE",
    "build_flip",
    "image_to_tensor",
    "semantic_from_panoptic",
    "semantic_to_instances",
    "masks_to_instances",
]

IMAGE_PAD_VALUE = 128  # grey, as in Mask2Former; labels are padded with "ignore" / "void"


def build_flip(cfg: CfgNode) -> List[T.Augmentation]:
    """The random flip selected by ``cfg.INPUT.RANDOM_FLIP`` ("none", "horizontal", "vertical")."""
    mode = cfg.INPUT.RANDOM_FLIP
    if mode == "none":
        return []
    if mode not in ("horizontal", "vertical"):
        raise ValueError(
            f"cfg.INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {mode!r}"
        )
    return [T.RandomFlip(horizontal=mode == "horizontal", vertical=mode == "vertical")]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x C array -> C x H x W tensor, keeping the dtype (uint8 for images we read)."""
    # an explicit copy, not np.ascontiguousarray: that returns a flipped 1-pixel-wide image
    # unchanged (numpy calls it contiguous) with a negative stride, which torch refuses
    return torch.from_numpy(image.transpose(2, 0, 1).copy())


def semantic_from_panoptic(
    panoptic_ids: np.ndarray, segments_info: List[Dict], ignore_label: int
) -> np.ndarray:
    """Per-pixel contiguous category (uint8; ``ignore_label`` where no segment), like the
    ``panoptic_semseg`` PNGs that Mask2Former's prepare script writes (crowd included)."""
    semantic = np.full(panoptic_ids.shape, ignore_label, dtype=np.uint8)
    for segment in segments_info:
        category = segment["category_id"]
        if not 0 <= category < 255 or category == ignore_label:
            raise ValueError(
                f"Panoptic segment {segment['id']} has contiguous category {category}; expected "
                f"0..254 and not the ignore label {ignore_label}"
            )
        semantic[panoptic_ids == segment["id"]] = category
    return semantic


def masks_to_instances(
    image_size: Tuple[int, int], classes: Sequence[int], masks: List[torch.Tensor], with_boxes: bool
) -> Instances:
    """Build training targets, dropping masks that are empty (e.g. cropped away).

    Args:
        image_size: (H, W).
        classes: N contiguous class ids.
        masks: N bool tensors H x W.
        with_boxes: also set ``gt_boxes`` from the masks.
    """
    masks = torch.stack(masks) if masks else torch.zeros((0, *image_size), dtype=torch.bool)
    keep = masks.flatten(1).any(dim=1)
    instances = Instances(image_size)
    instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)[keep]
    instances.gt_masks = masks[keep]
    if with_boxes:
        instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
    return instances


def semantic_to_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """One target per class present in ``sem_seg`` (H x W int64), as in MaskFormer."""
    classes = [int(c) for c in torch.unique(sem_seg) if int(c) != ignore_label]
    masks = [sem_seg == c for c in classes]
    return masks_to_instances(tuple(sem_seg.shape), classes, masks, with_boxes=False)

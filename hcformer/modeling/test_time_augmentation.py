"""Semantic segmentation with test-time augmentation: multi-scale and horizontal flip.

The wrapper behaves like the model it wraps at inference (a list of dataset dicts in, one
``{"sem_seg": (K, H, W)}`` per image out), so detectron2's ``inference_on_dataset`` and
``SemSegEvaluator`` use it unchanged. For every image, detectron2's ``DatasetMapperTTA`` makes
one copy per short-edge size in ``cfg.TEST.AUG.MIN_SIZES`` (long edge at most
``TEST.AUG.MAX_SIZE``), plus a horizontally flipped one of each if ``TEST.AUG.FLIP``. The model
returns every copy's scores at the original height × width (the copies keep the input's
"height" / "width"), so undoing an augmentation only means flipping the flipped scores back;
the result is their mean:

    sem_seg = (1/A) Σ_a unflip_a(model(augment_a(image))["sem_seg"])

The scores are averaged as the model returns them (HCFormer: Σ_q p(class | q)·sigmoid(mask_q),
not normalised over classes), as Mask2Former does: with a single un-flipped augmentation at the
input's own size the result is exactly the model's output.
"""
import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import (
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    TransformList,
    VFlipTransform,
)
from detectron2.modeling import DatasetMapperTTA
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SemanticSegmentorWithTTA"]

# What the model's post-processing undoes by itself (it resizes to the original size).
_UNDONE_BY_THE_MODEL = (ResizeTransform, NoOpTransform)


def _undo_flips(sem_seg: Tensor, transforms: TransformList) -> Tensor:
    """Flip (K, H, W) scores of an augmented copy back to the original orientation."""
    for t in transforms.transforms:
        if isinstance(t, HFlipTransform):
            sem_seg = sem_seg.flip(-1)
        elif isinstance(t, VFlipTransform):
            sem_seg = sem_seg.flip(-2)
        elif not isinstance(t, _UNDONE_BY_THE_MODEL):
            raise NotImplementedError(f"SemanticSegmentorWithTTA cannot undo a {type(t).__name__}")
    return sem_seg


class SemanticSegmentorWithTTA(nn.Module):
    """A semantic segmentation model with test-time augmentation.

    Args:
        cfg: the config; reads TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP} (through detectron2's
            ``DatasetMapperTTA``) and INPUT.FORMAT (to read images of inputs that have none).
        model: a model returning "sem_seg" (HCFormer with SEMANTIC_ON), possibly wrapped in
            DistributedDataParallel.
        batch_size: augmented copies of one image per model call.
    """

    def __init__(self, cfg: CfgNode, model: nn.Module, batch_size: int = 1):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not getattr(model, "semantic_on", True):
            raise ValueError("SemanticSegmentorWithTTA needs MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]]:
        """One ``{"sem_seg": (K, height, width)}`` per input, the mean over its augmentations."""
        return [self._inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, x: Dict) -> Dict:
        """The input with "image" (read from "file_name" if needed) and its original size."""
        x = copy.copy(x)
        if "image" not in x:
            image = read_image(x["file_name"], self.cfg.INPUT.FORMAT)  # (H, W, C)
            x["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        x.setdefault("height", x["image"].shape[-2])
        x.setdefault("width", x["image"].shape[-1])
        return x

    def _inference_one_image(self, x: Dict) -> Dict[str, Tensor]:
        augmented = self.tta_mapper(x)
        total: Optional[Tensor] = None
        with torch.no_grad():
            for start in range(0, len(augmented), self.batch_size):
                batch = augmented[start : start + self.batch_size]
                for augmented_input, output in zip(batch, self.model(batch)):
                    sem_seg = _undo_flips(output["sem_seg"], augmented_input["transforms"])
                    total = sem_seg if total is None else total + sem_seg
        return {"sem_seg": total / len(augmented)}

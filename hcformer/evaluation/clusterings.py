"""The clusterings an HCFormer forward pass computes, as id maps at each image's original size.

HCFormer's masks are decoded through a hierarchy of clusterings (§2.3 of the paper). Scoring or
drawing them needs, per image, one (height, width) int64 map of cluster ids for:

============  ===================================================================================
clustering    definition
============  ===================================================================================
level k       hard clustering of level k (``Hierarchy.hard_labels(k)``): the argmax assignments
              of the k finest clustering layers composed; level 0 is the finest grid itself
              (one cluster per cell of stride ``finest_stride``), level L = num_levels the
              coarsest grid (stride 32). A level-k cluster has (roughly) stride finest·2^k.
queries       every pixel goes to the query maximising P_{i,c_i}·sigmoid(M_ji) over the queries
              whose most likely class c_i is not "no object" (appendix E of the paper), see
              :func:`query_clustering`.
============  ===================================================================================

Maps are computed on the padded input, cropped to the image and resized to the original
height × width (nearest for the levels, bilinear mask logits for the queries, as the model's own
post-processing does).

The standard outputs of the model do not carry the hierarchy. :class:`HierarchyRecorder` puts
forward hooks on ``model.backbone`` (which returns the hierarchy as ``features["assign"]``) and
``model.sem_seg_head`` (the query predictions at the coarsest stride), so the clusterings come
from the forward pass that produced the predictions, without running the model twice. Used by
the :class:`~hcformer.evaluation.HierarchyEvaluator`, ``tools/visualize_hierarchy.py`` and the
demo.
"""
import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.evaluation.evaluator import inference_context
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch import Tensor, nn

from hcformer.modeling.hierarchy import Hierarchy

__all__ = [
    "HierarchyForward",
    "HierarchyRecorder",
    "forward_with_hierarchy",
    "image_clusterings",
    "query_clustering",
    "rerun_for_hierarchy",
    "level_stride",
]

logger = logging.getLogger(__name__)


@dataclass
class HierarchyForward:
    """What the clusterings need from one inference forward pass of a batch."""

    padded_size: Tuple[int, int]  # (H, W) of the padded batch tensor
    batch_size: int
    hierarchy: Hierarchy
    pred_logits: Optional[Tensor] = None  # (B, Q, K+1)
    pred_masks: Optional[Tensor] = None  # (B, Q, h, w) mask logits
    masks_decoded: bool = False  # pred_masks at the finest level (True) or the coarsest (False)


class HierarchyRecorder:
    """Forward hooks that keep what an HCFormer's inference forward passes computed.

    Use as a context manager around ``model(inputs)``, or ``attach()`` / ``detach()`` for a
    longer life (an evaluator keeps it attached from ``reset()`` to ``evaluate()``). Forward
    passes in training mode are not recorded.

    Args:
        model: an HCFormer (not wrapped in DistributedDataParallel): it needs ``backbone``,
            whose output holds the hierarchy under "assign", and ``sem_seg_head``.
    """

    def __init__(self, model: nn.Module):
        self._model = model
        self._hooks: List[torch.utils.hooks.RemovableHandle] = []
        self._last: Optional[HierarchyForward] = None
        self.num_forwards = 0  # inference forward passes since the last take()

    def attach(self) -> "HierarchyRecorder":
        self.detach()
        self._hooks = [
            self._model.backbone.register_forward_hook(self._on_backbone),
            self._model.sem_seg_head.register_forward_hook(self._on_head),
        ]
        self._last, self.num_forwards = None, 0
        return self

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self) -> "HierarchyRecorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _on_backbone(self, module: nn.Module, args: Tuple, output: Dict) -> None:
        if module.training:  # a training step between evaluations is none of our business
            return
        images = args[0]
        self._last = HierarchyForward(tuple(images.shape[-2:]), images.shape[0], output["assign"])
        self.num_forwards += 1

    def _on_head(self, module: nn.Module, args: Tuple, output: Dict) -> None:
        if module.training or self._last is None:
            return
        # The tensors, not the dict: HCFormer.run replaces the dict's masks by decoded ones.
        self._last.pred_logits = output["pred_logits"]
        self._last.pred_masks = output["pred_masks"]

    def take(self, batch_size: int) -> Optional[HierarchyForward]:
        """The forward pass of a batch of ``batch_size`` images if exactly one was recorded
        since the last call, else None (none, or several as under test-time augmentation)."""
        forward, count = self._last, self.num_forwards
        self._last, self.num_forwards = None, 0
        if count == 1 and forward.pred_masks is not None and forward.batch_size == batch_size:
            return forward
        if count > 1:
            logger.debug("%d forward passes for one batch: the hierarchy is ambiguous", count)
        return None


def rerun_for_hierarchy(model: nn.Module, inputs: List[Dict]) -> HierarchyForward:
    """A fresh forward pass (``model.preprocess`` + ``model.run``) of ``inputs``."""
    with inference_context(model), torch.no_grad():
        images = model.preprocess(inputs)
        outputs, hierarchy = model.run(images)
    return HierarchyForward(
        tuple(images.tensor.shape[-2:]), len(inputs), hierarchy,
        outputs["pred_logits"], outputs["pred_masks"], masks_decoded=True,
    )


def forward_with_hierarchy(model: nn.Module, inputs: List[Dict]) -> Tuple[List[Dict], HierarchyForward]:
    """``model(inputs)`` in inference mode, and the hierarchy that forward pass computed.

    Falls back to :func:`rerun_for_hierarchy` when the call ran the model more than once.
    """
    with HierarchyRecorder(model) as recorder, inference_context(model), torch.no_grad():
        outputs = model(inputs)
    forward = recorder.take(len(inputs))
    return outputs, forward if forward is not None else rerun_for_hierarchy(model, inputs)


def query_clustering(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """Assign every pixel to a mask query: argmax_{i: c_i ≠ ∅} P_{i,c_i} · sigmoid(M_ji).

    P = softmax(pred_logits) and c_i = argmax_c P_ic over the K classes and "no object" (∅):
    this is the arg max of the paper's appendix E, under which the segmentation head is itself
    a clustering of the pixels with the queries as prototypes. If every query predicts ∅ (an
    untrained model), all queries compete with their best non-void probability instead.

    Args:
        pred_logits: (Q, K+1) class logits, "no object" last.
        pred_masks: (Q, H, W) mask logits.

    Returns:
        (H, W) int64 index of the winning query.
    """
    probs = pred_logits.softmax(-1)
    scores = probs[:, :-1].max(-1).values  # = P_{i,c_i} for the queries kept below
    kept = (probs.argmax(-1) != probs.shape[-1] - 1).nonzero()[:, 0]
    if len(kept) == 0 or len(kept) == len(probs):
        kept = torch.arange(len(probs), device=probs.device)
        similarity = pred_masks.sigmoid()  # no indexing copy of the (Q, H, W) masks
    else:
        similarity = pred_masks[kept].sigmoid()
    # in place: at 1024×2048 with 100 queries, each (Q, H, W) temporary is 800 MB
    winner = similarity.mul_(scores[kept, None, None]).argmax(0)
    return kept[winner]


def level_stride(hierarchy: Hierarchy, level: int) -> Optional[int]:
    """Stride of level ``level`` w.r.t. the input: finest stride · 2^level, the side of the grid
    cells its clusters are made of. None for a hierarchy that does not say its finest stride."""
    finest = getattr(hierarchy, "finest_stride", None)
    return None if finest is None else finest * 2**level


def image_clusterings(
    forward: HierarchyForward,
    inputs: List[Dict],
    levels: Optional[Sequence[int]] = None,
    queries: bool = True,
) -> Iterator[Dict[str, Tensor]]:
    """Per image: {"level0": .., ..., "levelL": .., "queries": ..}, (height, width) int64 ids each.

    Args:
        forward: the forward pass of the batch ``inputs``.
        inputs: the model inputs: "image" (C, h, w) as fed to the model, and optionally the
            original "height" and "width" (default: the fed size).
        levels: which levels to compute (default all, 0..num_levels).
        queries: whether to compute the query clustering too (a (Q, H, W) sigmoid per image).
    """
    hierarchy, padded_size = forward.hierarchy, forward.padded_size
    levels = range(hierarchy.num_levels + 1) if levels is None else levels
    for k in levels:
        if not 0 <= k <= hierarchy.num_levels:
            raise ValueError(f"level {k} does not exist: the hierarchy has levels 0..{hierarchy.num_levels}")
    masks = None
    if queries:
        masks = forward.pred_masks if forward.masks_decoded else hierarchy.decode(forward.pred_masks)
        # mask logits at the padded input size, as HCFormer.inference upsamples them
        masks = F.interpolate(masks, size=padded_size, mode="bilinear", align_corners=False)
    # (B, H_pad, W_pad) per level; a hierarchy without assignments has no batch dimension
    level_labels = {
        k: hierarchy.hard_labels(k, output_size=padded_size).expand(forward.batch_size, -1, -1) for k in levels
    }
    for i, x in enumerate(inputs):
        image_size = tuple(x["image"].shape[-2:])
        out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
        clusterings = {
            f"level{k}": _resize_labels(labels[i], image_size, out_size) for k, labels in level_labels.items()
        }
        if masks is not None:
            image_masks = masks[i, :, : image_size[0], : image_size[1]]
            if image_masks.shape[-2:] != out_size:  # skip the identity resize: (Q, H, W) can be large
                image_masks = sem_seg_postprocess(image_masks, image_size, *out_size)
            clusterings["queries"] = query_clustering(forward.pred_logits[i], image_masks)
        yield clusterings


def _resize_labels(labels: Tensor, image_size: Tuple[int, int], out_size: Tuple[int, int]) -> Tensor:
    """Crop (H_pad, W_pad) ids to the image and resize them (nearest) to the original size."""
    labels = labels[: image_size[0], : image_size[1]]
    # float64 keeps every id exact (float32 would round ids above 2^24)
    resized = F.interpolate(labels[None, None].double(), size=out_size, mode="nearest")
    return resized[0, 0].long()

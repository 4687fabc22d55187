"""Turn the (class, mask) predictions of one image into semantic, panoptic or instance results.

The per-image rules live in ``hcformer_deploy.postprocess``, which the runner of exported models
shares (it imports no detectron2); this module re-exports them for the eager model, wraps
instances in detectron2's ``Instances``, and adds the clusterings of a forward pass, which need
the hierarchy. ``resize_to_output`` crops the padding and resizes to the original image:
detectron2's ``sem_seg_postprocess``, skipping the identity resize.
"""

from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

from hcformer_deploy.id_maps import resize_ids
from hcformer_deploy.postprocess import (
    instance_predictions,
    masks_to_boxes,
    panoptic_inference,
    resize_to_output,
    semantic_inference,
)

from .hierarchy import Hierarchy

__all__ = [
    "resize_to_output",
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "instance_predictions",
    "masks_to_boxes",
    "query_clustering",
    "level_clusterings",
    "level_strides",
]


def instance_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    num_classes: int,
    num_queries: int,
    top_k: int,
    thing_ids: Set[int],
    panoptic_on: bool,
    mask_probs: Optional[Tensor] = None,
) -> Instances:
    """``instance_predictions`` (same arguments) as detectron2 ``Instances`` of image size
    (H, W): pred_masks (N, H, W) float in {0, 1}, pred_boxes, scores (N,), pred_classes (N,)."""
    fields = instance_predictions(mask_cls, mask_pred, num_classes, num_queries, top_k, thing_ids, panoptic_on,
                                  mask_probs)
    return Instances(tuple(mask_pred.shape[-2:]), **{**fields, "pred_boxes": Boxes(fields["pred_boxes"])})


# ---------------------------------------------------------------------------- clusterings
# What the hierarchy tools (HierarchyEvaluator, tools/visualize_hierarchy.py, the demo's
# --show-level) look at: per image, an (H, W) int64 map of cluster ids at the original size for
# every level of the hierarchy and for the queries. The model returns them on request
# (``HCFormer.forward(..., clusterings=...)``), from the forward pass that made its predictions.


def query_clustering(mask_cls: Tensor, mask_pred: Tensor, mask_probs: Optional[Tensor] = None) -> Tensor:
    """Assign every pixel to a mask query: argmax_{i: c_i ≠ ∅} P_{i,c_i} · sigmoid(M_ji).

    P = softmax(mask_cls) and c_i = argmax_c P_ic over the K classes and "no object" (∅): the arg
    max of the paper's appendix E, under which the segmentation head is itself a clustering of
    the pixels with the queries as prototypes. If every query predicts ∅ (an untrained model),
    all queries compete with their best non-void probability instead.

    Args:
        mask_cls: (Q, K+1) class logits, "no object" last.
        mask_pred: (Q, H, W) mask logits; ``mask_probs`` their sigmoid if already computed.

    Returns:
        (H, W) int64 index of the winning query.
    """
    probs = mask_cls.softmax(-1)
    scores = probs[:, :-1].max(-1).values  # = P_{i,c_i} for the queries kept below
    kept = (probs.argmax(-1) != probs.shape[-1] - 1).nonzero()[:, 0]
    if len(kept) == 0:
        kept = torch.arange(len(probs), device=probs.device)
    if mask_probs is not None:
        similarity = mask_probs[kept] * scores[kept, None, None]
    else:
        # in place: at 1024×2048 with 100 queries, each (Q, H, W) temporary is 800 MB
        similarity = mask_pred[kept].sigmoid_().mul_(scores[kept, None, None])
    return kept[similarity.argmax(0)]


def level_clusterings(
    hierarchy: Hierarchy,
    levels: Sequence[int],
    padded_size: Tuple[int, int],
    image_sizes: Sequence[Tuple[int, int]],
    output_sizes: Sequence[Tuple[int, int]],
) -> List[Dict[str, Tensor]]:
    """Per image, {"level<k>": (height, width) int64 ids} of the hard clustering of each level.

    Level k composes the argmax assignments of the k finest clusterings
    (``Hierarchy.hard_labels``): level 0 is the finest grid itself, level ``num_levels`` the
    coarsest. The maps are made at the padded input size (nearest), cropped to each image and
    resized (nearest) to its output size, as the predictions are.

    Args:
        padded_size: (H, W) of the padded batch; ``image_sizes`` the fed size of every image,
            ``output_sizes`` the size its outputs have.
    """
    for k in levels:
        if not 0 <= k <= hierarchy.num_levels:
            raise ValueError(f"level {k} does not exist: the hierarchy has levels 0..{hierarchy.num_levels}")
    # (B, H_pad, W_pad) per level; a hierarchy without assignments has no batch dimension
    maps = {k: hierarchy.hard_labels(k, output_size=padded_size).expand(len(image_sizes), -1, -1) for k in levels}
    return [
        {f"level{k}": resize_ids(labels[i, : image_size[0], : image_size[1]], out_size) for k, labels in maps.items()}
        for i, (image_size, out_size) in enumerate(zip(image_sizes, output_sizes))
    ]


def level_strides(hierarchy: Hierarchy) -> Dict[int, Optional[Union[int, str]]]:
    """{level: side of the grid cells its clusters are made of} (the hierarchy's
    ``level_strides``; "HxW" where the cells are not square); None for a hierarchy of segments
    rather than grid cells (CAST)."""
    strides = getattr(hierarchy, "level_strides", None)
    if strides is None:
        return {k: None for k in range(hierarchy.num_levels + 1)}
    return {k: sy if sy == sx else f"{sy}x{sx}" for k, (sy, sx) in enumerate(strides)}

"""Post-processing of one image's (class, mask) predictions: semantic, panoptic, instance results.

The one implementation, shared by the eager model (``hcformer.modeling.postprocess``, which
wraps instances in detectron2's ``Instances``) and the runner of exported models
(``hcformer_deploy.exported_model``): it imports neither detectron2 nor hcformer, only torch.

All functions take the Q query predictions of a single image: ``mask_cls`` (Q, K+1) class
logits, the last class being "no object", and ``mask_pred`` (Q, H, W) mask logits already
resized to the output resolution (``resize_to_output``); optionally ``mask_probs``, their
sigmoid, when the caller runs several of them on one image (a (Q, H, W) sigmoid at full
resolution is worth sharing).
"""
from typing import Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "resize_to_output",
    "semantic_inference",
    "panoptic_inference",
    "instance_predictions",
    "masks_to_boxes",
]


def resize_to_output(masks: Tensor, image_size: Tuple[int, int], height: int, width: int) -> Tensor:
    """(C, H_pad, W_pad) maps of a padded input → (C, height, width): crop the padding to the
    fed ``image_size``, then resize (bilinear, half-pixel centres) to the output size.

    detectron2's ``sem_seg_postprocess``, without the resize when the sizes already agree: a
    same-size bilinear resize is the identity, and a pass over (Q, H, W) masks at full
    resolution.
    """
    masks = masks[:, : image_size[0], : image_size[1]]
    if masks.shape[-2:] == (height, width):
        return masks
    return F.interpolate(masks[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def semantic_inference(mask_cls: Tensor, mask_pred: Tensor, mask_probs: Optional[Tensor] = None) -> Tensor:
    """Per-pixel class scores: sum over queries of p(class | query) · p(pixel in mask | query).

    Returns:
        (K, H, W) scores, not normalised over classes.
    """
    probs = mask_cls.softmax(-1)[:, :-1]
    mask_probs = mask_pred.sigmoid() if mask_probs is None else mask_probs
    return torch.einsum("qk,qhw->khw", probs, mask_probs)


def panoptic_inference(
    mask_cls: Tensor,
    mask_pred: Tensor,
    num_classes: int,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_ids: Set[int],
    mask_probs: Optional[Tensor] = None,
) -> Tuple[Tensor, List[Dict[str, object]]]:
    """Non-overlapping segments from confident queries.

    A query is kept if its most likely class is not "no object" and that class' probability
    exceeds ``object_mask_threshold``. Each pixel goes to the kept query maximising
    score · sigmoid(mask); a query becomes a segment if it wins pixels, its own mask
    (sigmoid >= 0.5) is not empty, and it wins at least ``overlap_threshold`` of that mask
    (heavily occluded queries are duplicates). Stuff queries of the same class form one segment.

    Args:
        num_classes: K; class index K is "no object".
        thing_ids: contiguous class ids of thing categories.

    Returns:
        panoptic_seg: (H, W) int32 segment ids, 0 where no segment.
        segments_info: per segment, {"id": int, "isthing": bool, "category_id": int}
            (contiguous id), ids 1, 2, ... in order of creation.
    """
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    # sigmoid of the kept queries only, unless the caller has it for all
    mask_probs = mask_pred[keep].sigmoid() if mask_probs is None else mask_probs[keep]
    scores, labels = scores[keep], labels[keep]

    height, width = mask_pred.shape[-2:]
    segments_info: List[Dict[str, object]] = []
    if len(labels) == 0:
        return torch.zeros((height, width), dtype=torch.int32, device=mask_pred.device), segments_info

    # Every per-query quantity from three passes over the (K, H, W) maps (winner, own masks,
    # own mask at the winner) and bincounts, instead of several (H, W) passes per query.
    num_kept = len(labels)
    winner = (scores[:, None, None] * mask_probs).argmax(0)  # (H, W) index into kept queries
    own = mask_probs >= 0.5  # (K, H, W) each query's own mask
    in_own_mask = own.gather(0, winner[None])[0]  # (H, W): the pixel lies in its winner's own mask
    won_area = torch.bincount(winner.flatten(), minlength=num_kept).tolist()
    own_area = own.flatten(1).sum(1).tolist()
    segment_area = torch.bincount(winner[in_own_mask], minlength=num_kept).tolist()

    # query → segment id (0: none); stuff queries of one class share the first one's segment
    segment_of_query = [0] * num_kept
    stuff_segment_of_class: Dict[int, int] = {}
    for k, label in enumerate(labels.tolist()):
        isthing = label in thing_ids
        if won_area[k] == 0 or own_area[k] == 0 or segment_area[k] == 0:
            continue
        if won_area[k] / own_area[k] < overlap_threshold:
            continue
        if not isthing and label in stuff_segment_of_class:
            segment_of_query[k] = stuff_segment_of_class[label]
            continue
        segment_id = len(segments_info) + 1
        segment_of_query[k] = segment_id
        segments_info.append({"id": segment_id, "isthing": isthing, "category_id": label})
        if not isthing:
            stuff_segment_of_class[label] = segment_id
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=mask_pred.device)
    panoptic_seg = torch.where(in_own_mask, lookup[winner], torch.zeros((), dtype=torch.int32, device=mask_pred.device))
    return panoptic_seg, segments_info


def instance_predictions(
    mask_cls: Tensor,
    mask_pred: Tensor,
    num_classes: int,
    num_queries: int,
    top_k: int,
    thing_ids: Set[int],
    panoptic_on: bool,
    mask_probs: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The ``top_k`` most confident (query, class) pairs as instances.

    Every query proposes every class, scored p(class | query); the best ``top_k`` of the Q×K
    pairs are kept (a query may appear with several classes). The score is then multiplied by
    the mean mask probability inside the binary mask, which ranks well-delineated masks higher.

    Args:
        num_classes: K.
        num_queries: Q, must equal ``mask_cls.shape[0]``.
        top_k: instances to return (fewer if Q×K is smaller).
        thing_ids: contiguous ids of thing classes.
        panoptic_on: if True (a panoptic dataset), drop instances of stuff classes.

    Returns:
        {"pred_masks": (N, H, W) float in {0, 1}, "pred_boxes": (N, 4) XYXY boxes of the
        binary masks (zeros for empty masks), "scores": (N,), "pred_classes": (N,) int64}: the
        fields of detectron2's ``Instances`` (``hcformer.modeling.postprocess.instance_inference``
        makes one of them).
    """
    if mask_cls.shape != (num_queries, num_classes + 1):
        raise ValueError(
            f"mask_cls has shape {tuple(mask_cls.shape)}, "
            f"expected ({num_queries}, {num_classes + 1})"
        )
    scores = mask_cls.softmax(-1)[:, :-1]  # (Q, K)
    top_scores, top_idx = scores.flatten().topk(min(top_k, scores.numel()), sorted=False)
    labels = top_idx % num_classes
    query_idx = top_idx // num_classes

    if panoptic_on:
        is_thing = torch.tensor(
            [label in thing_ids for label in labels.tolist()],
            dtype=torch.bool,
            device=labels.device,
        )
        top_scores, labels, query_idx = top_scores[is_thing], labels[is_thing], query_idx[is_thing]

    # per query: binary mask, its box and the mean probability inside it
    queries, pair_query = query_idx.unique(return_inverse=True)
    selected = mask_pred[queries]
    binary = selected > 0
    probs = selected.sigmoid() if mask_probs is None else mask_probs[queries]
    mask_scores = (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    boxes = masks_to_boxes(binary)

    return {
        "pred_masks": binary[pair_query].float(),
        "pred_boxes": boxes[pair_query],
        "scores": top_scores * mask_scores[pair_query],
        "pred_classes": labels,
    }


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes around binary masks, detectron2 convention (x1, y1 exclusive).

    Same result as ``BitMasks(masks).get_bounding_boxes()``, without a Python loop and on the
    device of ``masks``.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32 boxes [x0, y0, x1, y1]; all zeros for empty masks.
    """
    n, height, width = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    cols = masks.any(dim=1)  # (N, W): columns with a mask pixel
    rows = masks.any(dim=2)  # (N, H)
    # argmax returns the first maximal index: the first occupied column / row, from each end.
    x0 = cols.int().argmax(1)
    x1 = width - cols.flip(1).int().argmax(1)
    y0 = rows.int().argmax(1)
    y1 = height - rows.flip(1).int().argmax(1)
    nonempty = cols.any(1)
    boxes[nonempty] = torch.stack([x0, y0, x1, y1], dim=1)[nonempty].float()
    return boxes

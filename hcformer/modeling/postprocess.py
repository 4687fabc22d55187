"""Turn the (class, mask) predictions of one image into semantic, panoptic or instance results.

All functions take the Q query predictions of a single image: ``mask_cls`` (Q, K+1) class
logits, the last class being "no object", and ``mask_pred`` (Q, H, W) mask logits already
resized to the output resolution; optionally ``mask_probs``, their sigmoid, when the caller
runs several of them on one image (a (Q, H, W) sigmoid at full resolution is worth sharing). ``sem_seg_postprocess`` (crop the padding, resize to the
original image) is detectron2's and is re-exported here so that callers find all post-processing
in one place.
"""

from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor

from hcformer.layers.id_maps import resize_ids

from .hierarchy import Hierarchy

__all__ = [
    "sem_seg_postprocess",
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "masks_to_boxes",
    "query_clustering",
    "level_clusterings",
    "level_strides",
]


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
        Instances of image size (H, W) with pred_masks (N, H, W) float in {0, 1},
        pred_boxes (XYXY boxes of the binary masks; zeros for empty masks),
        scores (N,) and pred_classes (N,) int64.
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

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = binary[pair_query].float()
    result.pred_boxes = Boxes(boxes[pair_query])
    result.scores = top_scores * mask_scores[pair_query]
    result.pred_classes = labels
    return result


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
        {f"level{k}": _crop_and_resize_ids(labels[i], image_size, out_size) for k, labels in maps.items()}
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


def _crop_and_resize_ids(ids: Tensor, image_size: Tuple[int, int], out_size: Tuple[int, int]) -> Tensor:
    """Crop (H_pad, W_pad) ids to the image and resize them (nearest, exactly) to the output size."""
    return resize_ids(ids[: image_size[0], : image_size[1]], out_size)

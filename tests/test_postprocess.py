"""Semantic / panoptic / instance inference on hand-built predictions."""

import pytest
import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks

from hcformer.modeling.postprocess import (
    instance_inference,
    masks_to_boxes,
    panoptic_inference,
    semantic_inference,
)

NO_OBJECT = 3  # K = 3 classes: 0 thing, 1 and 2 stuff
THING_IDS = {0}


def class_logits(label, confidence=10.0):
    logits = torch.zeros(NO_OBJECT + 1)
    logits[label] = confidence
    return logits


def region_logits(height, width, rows, cols):
    """+10 inside rows x cols (slices), -10 elsewhere."""
    logits = torch.full((height, width), -10.0)
    logits[rows, cols] = 10.0
    return logits


def test_semantic_inference_equals_loop_reference():
    torch.manual_seed(0)
    mask_cls, mask_pred = torch.randn(7, 5), torch.randn(7, 6, 9)
    expected = torch.zeros(4, 6, 9)
    probs = mask_cls.softmax(-1)
    for q in range(7):
        for k in range(4):
            expected[k] += probs[q, k] * mask_pred[q].sigmoid()
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred), expected)


# ------------------------------------------------------------------------- panoptic
def panoptic_scene():
    """8x10 image: thing on cols 0-3, stuff 1 on cols 4-7 (two queries), cols 8-9 contested."""
    h, w, all_ = 8, 10, slice(None)
    queries = [
        (class_logits(0), region_logits(h, w, all_, slice(0, 4))),  # thing -> segment 1
        (class_logits(1), region_logits(h, w, slice(0, 4), slice(4, 8))),  # stuff 1 -> segment 2
        (class_logits(1), region_logits(h, w, slice(4, 8), slice(4, 8))),  # stuff 1, merged into 2
        (class_logits(NO_OBJECT), region_logits(h, w, all_, all_)),  # no object: dropped
        (
            class_logits(2, confidence=1.0),
            region_logits(h, w, all_, all_),
        ),  # p = 0.48 < 0.8: dropped
        # thing, score 0.993: loses cols 6-7 to segment 2 and rows 0-1 to the next query,
        # keeping 12 of its 32 pixels: dropped by the overlap filter (12/32 < 0.8).
        (class_logits(0, confidence=6.0), region_logits(h, w, all_, slice(6, 10))),
        (
            class_logits(2, confidence=8.0),
            region_logits(h, w, slice(0, 2), slice(8, 10)),
        ),  # stuff 2
    ]
    mask_cls = torch.stack([q[0] for q in queries])
    mask_pred = torch.stack([q[1] for q in queries])
    return mask_cls, mask_pred


def test_panoptic_inference_thresholds_merging_and_overlap_filter():
    mask_cls, mask_pred = panoptic_scene()
    seg, info = panoptic_inference(mask_cls, mask_pred, NO_OBJECT, 0.8, 0.8, THING_IDS)
    expected = torch.zeros(8, 10, dtype=torch.int32)
    expected[:, 0:4] = 1
    expected[:, 4:8] = 2
    expected[0:2, 8:10] = 3
    assert seg.dtype == torch.int32
    assert torch.equal(seg, expected)
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 1},
        {"id": 3, "isthing": False, "category_id": 2},
    ]


def test_panoptic_inference_lower_overlap_threshold_keeps_occluded_thing():
    mask_cls, mask_pred = panoptic_scene()
    seg, info = panoptic_inference(mask_cls, mask_pred, NO_OBJECT, 0.8, 0.3, THING_IDS)
    assert [s["category_id"] for s in info] == [0, 1, 0, 2]
    expected = torch.zeros(8, 10, dtype=torch.int32)
    expected[:, 0:4] = 1
    expected[:, 4:8] = 2
    expected[2:8, 8:10] = 3
    expected[0:2, 8:10] = 4
    assert torch.equal(seg, expected)


def test_panoptic_inference_pixels_outside_every_own_mask_get_zero():
    # One query whose mask covers the left half only: the right half has argmax 0 but a
    # mask probability below 0.5, so it belongs to no segment.
    mask_cls = class_logits(1)[None]
    mask_pred = region_logits(4, 4, slice(None), slice(0, 2))[None]
    seg, info = panoptic_inference(mask_cls, mask_pred, NO_OBJECT, 0.8, 0.8, THING_IDS)
    assert info == [{"id": 1, "isthing": False, "category_id": 1}]
    assert seg[:, :2].eq(1).all() and seg[:, 2:].eq(0).all()


def test_panoptic_inference_without_confident_queries():
    mask_cls = torch.stack([class_logits(NO_OBJECT), class_logits(0, confidence=0.5)])
    seg, info = panoptic_inference(mask_cls, torch.randn(2, 5, 6), NO_OBJECT, 0.8, 0.8, THING_IDS)
    assert info == [] and seg.shape == (5, 6) and seg.eq(0).all()


# ------------------------------------------------------------------------- instances
def instance_scene():
    """Q=3, K=2 on 8x10: a rectangle, a single pixel and an empty mask."""
    mask_pred = torch.full((3, 8, 10), -5.0)
    mask_pred[0, 1:4, 2:6] = 3.0
    mask_pred[1, 5, 7] = 1.0
    mask_cls = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    boxes = torch.tensor([[2.0, 1.0, 6.0, 4.0], [7.0, 5.0, 8.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    return mask_cls, mask_pred, boxes


def test_instance_inference_boxes_scores_and_labels():
    mask_cls, mask_pred, boxes = instance_scene()
    result = instance_inference(
        mask_cls, mask_pred, 2, 3, top_k=6, thing_ids={0, 1}, panoptic_on=False
    )
    assert len(result) == 6 and result.image_size == (8, 10)
    probs = mask_cls.softmax(-1)
    seen = set()
    for i in range(6):
        # Recover the query from the mask: the three binary masks are distinct.
        (q,) = [
            q for q in range(3) if torch.equal(result.pred_masks[i], (mask_pred[q] > 0).float())
        ]
        label = int(result.pred_classes[i])
        seen.add((q, label))
        torch.testing.assert_close(result.pred_boxes.tensor[i], boxes[q])
        inside = mask_pred[q] > 0
        mask_score = mask_pred[q].sigmoid()[inside].mean() if inside.any() else torch.tensor(0.0)
        torch.testing.assert_close(
            result.scores[i], probs[q, label] * mask_score, atol=1e-5, rtol=1e-5
        )
    assert seen == {(q, k) for q in range(3) for k in range(2)}


def test_instance_inference_top_k_and_panoptic_filter():
    mask_cls, mask_pred, boxes = instance_scene()
    top1 = instance_inference(
        mask_cls, mask_pred, 2, 3, top_k=1, thing_ids={0, 1}, panoptic_on=False
    )
    # Highest class probability: query 0, class 0 (softmax of [4, 0, 0]).
    assert top1.pred_classes.tolist() == [0]
    torch.testing.assert_close(top1.pred_boxes.tensor, boxes[:1])

    things = instance_inference(mask_cls, mask_pred, 2, 3, top_k=6, thing_ids={1}, panoptic_on=True)
    assert len(things) == 3 and things.pred_classes.eq(1).all()
    # Without panoptic_on, thing_ids are not used to filter.
    assert len(instance_inference(mask_cls, mask_pred, 2, 3, 6, {1}, panoptic_on=False)) == 6

    with pytest.raises(ValueError, match="mask_cls"):
        instance_inference(mask_cls, mask_pred, 2, 4, 6, {1}, panoptic_on=False)


def test_masks_to_boxes_equals_detectron2_bitmasks():
    torch.manual_seed(0)
    masks = torch.rand(20, 13, 17) > 0.97  # sparse: some empty, some single pixels
    masks[0] = False
    expected = BitMasks(masks).get_bounding_boxes().tensor
    assert (expected[0] == 0).all() and (expected.sum(1) > 0).sum() > 10
    torch.testing.assert_close(masks_to_boxes(masks), expected)
    assert masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


def test_shared_mask_probabilities_give_the_same_results():
    """HCFormer.inference passes one sigmoid to all three; each computes its own otherwise."""
    torch.manual_seed(1)
    mask_cls, mask_pred = torch.randn(6, NO_OBJECT + 1) * 4, torch.randn(6, 7, 9) * 5
    probs = mask_pred.sigmoid()
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred, probs), semantic_inference(mask_cls, mask_pred))
    pan_a = panoptic_inference(mask_cls, mask_pred, NO_OBJECT, 0.3, 0.5, THING_IDS, probs)
    pan_b = panoptic_inference(mask_cls, mask_pred, NO_OBJECT, 0.3, 0.5, THING_IDS)
    assert torch.equal(pan_a[0], pan_b[0]) and pan_a[1] == pan_b[1]
    a = instance_inference(mask_cls, mask_pred, NO_OBJECT, 6, 10, THING_IDS, False, probs)
    b = instance_inference(mask_cls, mask_pred, NO_OBJECT, 6, 10, THING_IDS, False)
    for field in ("pred_masks", "scores", "pred_classes"):
        assert torch.equal(a.get(field), b.get(field)), field
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_resize_to_output_skips_only_the_identity_resize():
    from hcformer.modeling.meta_arch import resize_to_output

    masks = torch.randn(3, 12, 16)
    torch.testing.assert_close(resize_to_output(masks, (10, 14), 10, 14), sem_seg_postprocess(masks, (10, 14), 10, 14))
    torch.testing.assert_close(resize_to_output(masks, (10, 14), 20, 28), sem_seg_postprocess(masks, (10, 14), 20, 28))


def _panoptic_reference(mask_cls, mask_pred, num_classes, object_mask_threshold, overlap_threshold, thing_ids):
    """The panoptic rule written plainly, one query at a time (Mask2Former's loop)."""
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    probs, scores, labels = mask_pred[keep].sigmoid(), scores[keep], labels[keep]
    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    segments, stuff = [], {}
    if len(labels) == 0:
        return panoptic_seg, segments
    winner = (scores[:, None, None] * probs).argmax(0)
    for k, label in enumerate(labels.tolist()):
        own, won = probs[k] >= 0.5, winner == k
        segment = won & own
        if won.sum() == 0 or own.sum() == 0 or segment.sum() == 0 or won.sum() / own.sum() < overlap_threshold:
            continue
        if label not in thing_ids and label in stuff:
            panoptic_seg[segment] = stuff[label]
            continue
        segments.append({"id": len(segments) + 1, "isthing": label in thing_ids, "category_id": label})
        panoptic_seg[segment] = len(segments)
        if label not in thing_ids:
            stuff[label] = len(segments)
    return panoptic_seg, segments


@pytest.mark.parametrize("seed", range(12))
def test_panoptic_inference_equals_the_plain_reference(seed):
    """Random predictions with few classes (stuff merges happen), thresholds that keep some
    queries and drop others: the same map and segments as the one-query-at-a-time rule."""
    generator = torch.Generator().manual_seed(seed)
    num_queries, height, width = 12, 23, 31
    mask_cls = 3 * torch.randn(num_queries, NO_OBJECT + 1, generator=generator)
    mask_pred = 4 * torch.randn(num_queries, 6, 8, generator=generator)
    mask_pred = torch.nn.functional.interpolate(mask_pred[None], size=(height, width), mode="bilinear")[0]
    for object_threshold, overlap_threshold in [(0.0, 0.0), (0.4, 0.5), (0.6, 0.8)]:
        got = panoptic_inference(mask_cls, mask_pred, NO_OBJECT, object_threshold, overlap_threshold, THING_IDS)
        expected = _panoptic_reference(mask_cls, mask_pred, NO_OBJECT, object_threshold, overlap_threshold,
                                       THING_IDS)
        assert torch.equal(got[0], expected[0])
        assert got[1] == expected[1]

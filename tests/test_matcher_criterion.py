"""Point sampling, Hungarian matching and the set criterion against simple references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hcformer.modeling.criterion import (
    SetCriterion,
    build_weight_dict,
    dice_loss,
    sigmoid_ce_loss,
)
from hcformer.modeling.matcher import (
    HungarianMatcher,
    finite_cost,
    pairwise_dice_cost,
    pairwise_sigmoid_ce_cost,
)
from hcformer.modeling.point_sampling import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

NUM_CLASSES = 5
# Confident but not extreme mask logits: points sampled across a mask edge read a fractional
# target together with an interpolated logit, and there large logits would be penalised hard.
MASK_LOGIT = 6.0
# (y0, y1, x0, x1) with even bounds, so the masks survive 2x downsampling exactly.
BOXES = [(0, 16, 0, 16), (16, 32, 0, 32), (0, 16, 16, 32), (4, 12, 20, 28)]


def rectangle_masks(boxes, height=32, width=32):
    masks = torch.zeros(len(boxes), height, width)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 1
    return masks


def perfect_prediction(target, perm, num_queries, mask_size=32):
    """Logits where query perm[j] confidently predicts target j; other queries say "no object"."""
    logits = torch.full((num_queries, NUM_CLASSES + 1), -10.0)
    logits[:, NUM_CLASSES] = 10.0
    masks = torch.full((num_queries, mask_size, mask_size), -MASK_LOGIT)
    target_masks = target["masks"].float()
    if mask_size != target_masks.shape[-1]:
        size = (mask_size, mask_size)
        target_masks = F.interpolate(target_masks[None], size=size, mode="area")[0]
    for j, q in enumerate(perm):
        logits[q] = -10.0
        logits[q, target["labels"][j]] = 10.0
        masks[q] = MASK_LOGIT * (2 * target_masks[j] - 1)
    return logits, masks


def make_targets():
    return [
        {"labels": torch.tensor([3, 1, 1, 4]), "masks": rectangle_masks(BOXES).bool()},
        {"labels": torch.tensor([0, 2]), "masks": rectangle_masks(BOXES[1:3])},
    ]


def make_criterion(num_points=1024, importance_sample_ratio=0.75, eos_coef=0.1, dec_layers=3):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    return SetCriterion(
        NUM_CLASSES,
        matcher,
        build_weight_dict(2.0, 5.0, 5.0, dec_layers=dec_layers, deep_supervision=True),
        eos_coef=eos_coef,
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=importance_sample_ratio,
    )


# ------------------------------------------------------------------------- point sampling
def test_point_sample_reads_pixel_centres_in_xy_order():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 5, 7)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    coords = torch.stack([(xs + 0.5) / 7, (ys + 0.5) / 5], dim=-1).reshape(1, -1, 2).repeat(2, 1, 1)
    out = point_sample(image, coords, align_corners=False)
    assert out.shape == (2, 3, 35)
    torch.testing.assert_close(out, image.flatten(2))


def test_point_sample_interpolates_linearly():
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8)  # value = column index
    x = torch.linspace(0.1, 0.9, 11)
    coords = torch.stack([x, torch.full_like(x, 0.5)], dim=-1)[None]
    # With align_corners=False, pixel j's centre sits at x = (j + 0.5) / W.
    torch.testing.assert_close(point_sample(ramp, coords, align_corners=False)[0, 0], x * 8 - 0.5)


def test_uncertain_points_concentrate_on_the_decision_boundary():
    torch.manual_seed(0)
    xs = (torch.arange(64) + 0.5) / 64
    logits = (100 * (xs - 0.3)).view(1, 1, 1, 64).expand(2, 1, 64, 64)  # boundary at x = 0.3
    coords = get_uncertain_point_coords_with_randomness(
        logits,
        lambda l: -l.abs(),
        num_points=400,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    assert coords.shape == (2, 400, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    distance = (coords[..., 0] - 0.3).abs()
    # The 300 most uncertain of 1200 uniform candidates have |logit| below ~100/8 ...
    assert point_sample(logits, coords, align_corners=False)[:, 0, :300].abs().max() < 16
    # ... which puts them near the boundary, except for a few in the half-pixel band along the
    # top/bottom edges, where zero padding pulls the logits towards 0.
    assert (distance[:, :300] < 0.16).float().mean() > 0.95
    # The remaining 100 are uniform: some of them are far from it.
    assert distance[:, 300:].max() > 0.5

    uniform = get_uncertain_point_coords_with_randomness(logits, lambda l: -l.abs(), 400, 3.0, 0.0)
    assert (uniform[..., 0] - 0.3).abs().mean() > 0.2


def test_uncertain_points_are_detectron2s_point_set():
    """The same points as detectron2's PointRend function (same draws), in another order: the
    top-k here is unsorted, which permutes only the terms of the losses' sums over points."""
    from detectron2.projects.point_rend.point_features import (
        get_uncertain_point_coords_with_randomness as detectron2_points,
    )

    logits = torch.randn(3, 1, 24, 32)
    torch.manual_seed(0)
    ours = get_uncertain_point_coords_with_randomness(logits, lambda l: -l.abs(), 500, 3.0, 0.75)
    torch.manual_seed(0)
    theirs = detectron2_points(logits, lambda l: -l.abs(), 500, 3.0, 0.75)
    assert not torch.equal(ours[:, :375], theirs[:, :375])  # the order differs ...

    def as_set(coords):  # rows sorted by (x, y)
        key = coords[..., 0] * 4 + coords[..., 1]
        return coords.gather(1, key.argsort(dim=1)[..., None].expand(-1, -1, 2))

    torch.testing.assert_close(as_set(ours[:, :375]), as_set(theirs[:, :375]), rtol=0, atol=0)  # ... not the set
    torch.testing.assert_close(ours[:, 375:], theirs[:, 375:], rtol=0, atol=0)  # the uniform rest: the same draws


# ------------------------------------------------------------------------- matcher
def test_pairwise_costs_match_per_pair_losses():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 50), (torch.rand(3, 50) > 0.5).float()
    ce, dice = pairwise_sigmoid_ce_cost(logits, targets), pairwise_dice_cost(logits, targets)
    for q in range(4):
        for t in range(3):
            torch.testing.assert_close(
                ce[q, t], sigmoid_ce_loss(logits[q : q + 1], targets[t : t + 1], 1)
            )
            torch.testing.assert_close(
                dice[q, t], dice_loss(logits[q : q + 1], targets[t : t + 1], 1)
            )


@pytest.mark.parametrize("mask_size", [32, 16])
def test_matcher_recovers_a_known_permutation(mask_size):
    torch.manual_seed(0)
    targets = make_targets()
    perms = [[5, 0, 2, 7], [6, 1]]
    preds = [
        perfect_prediction(t, p, num_queries=8, mask_size=mask_size) for t, p in zip(targets, perms)
    ]
    outputs = {
        "pred_logits": torch.stack([p[0] for p in preds]),
        "pred_masks": torch.stack([p[1] for p in preds]),
    }
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256)
    for (rows, cols), perm in zip(matcher(outputs, targets), perms):
        assert rows.dtype == cols.dtype == torch.int64
        assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm))


def test_matcher_uses_class_probabilities_when_masks_tie():
    target = {"labels": torch.tensor([4, 2]), "masks": rectangle_masks(BOXES[:2])}
    logits, masks = perfect_prediction(target, [0, 1], num_queries=2)
    # Both queries predict the same mask: only the class term can tell them apart.
    masks[1] = masks[0]
    target["masks"][1] = target["masks"][0]
    outputs = {"pred_logits": logits[None], "pred_masks": masks[None]}
    ((rows, cols),) = HungarianMatcher(2, 5, 5, 256)(outputs, [target])
    assert cols[rows.argsort()].tolist() == [0, 1]


def test_matcher_handles_half_inputs_and_images_without_targets():
    torch.manual_seed(0)
    target = make_targets()[0]
    logits, masks = perfect_prediction(target, [3, 2, 1, 0], num_queries=6)
    outputs = {
        "pred_logits": torch.stack([logits, logits]).half(),
        "pred_masks": torch.stack([masks, masks]).half(),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}
    (rows0, cols0), (rows1, cols1) = HungarianMatcher(2, 5, 5, 128)(outputs, [target, empty])
    assert rows0.tolist() == [0, 1, 2, 3] and cols0.tolist() == [3, 2, 1, 0]
    assert rows1.shape == cols1.shape == (0,) and rows1.dtype == torch.int64


# ------------------------------------------------------------------------- criterion
def test_empty_weight_buffer():
    criterion = make_criterion(eos_coef=0.1)
    assert "empty_weight" in dict(criterion.named_buffers())
    expected = torch.ones(NUM_CLASSES + 1)
    expected[-1] = 0.1
    torch.testing.assert_close(criterion.state_dict()["empty_weight"], expected)


def test_build_weight_dict():
    weights = build_weight_dict(2.0, 5.0, 5.0, dec_layers=3, deep_supervision=True)
    assert weights == {
        "loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0,
        "loss_ce_0": 2.0, "loss_mask_0": 5.0, "loss_dice_0": 5.0,
        "loss_ce_1": 2.0, "loss_mask_1": 5.0, "loss_dice_1": 5.0,
    }  # fmt: skip
    assert build_weight_dict(2.0, 5.0, 5.0, dec_layers=3, deep_supervision=False) == {
        "loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0,
    }  # fmt: skip


def _outputs_from(preds):
    return {
        "pred_logits": torch.stack([p[0] for p in preds]).requires_grad_(),
        "pred_masks": torch.stack([p[1] for p in preds]).requires_grad_(),
    }


@pytest.mark.parametrize("mask_size", [32, 16])
def test_perfect_predictions_cost_almost_nothing(mask_size):
    torch.manual_seed(0)
    targets = make_targets()
    preds = [
        perfect_prediction(t, p, 8, mask_size) for t, p in zip(targets, [[5, 0, 2, 7], [6, 1]])
    ]
    # Uniform points: importance sampling would put most points on mask edges, where even a
    # perfect prediction pays for the interpolated, fractional target.
    criterion = make_criterion(importance_sample_ratio=0.0)
    losses = criterion(_outputs_from(preds), targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    for name, value in losses.items():
        assert value.item() < 0.1, name

    random_outputs = {
        "pred_logits": torch.randn(2, 8, NUM_CLASSES + 1),
        "pred_masks": torch.randn(2, 8, 32, 32),
    }
    for name, value in criterion(random_outputs, targets).items():
        assert value.item() > 0.4, name


def test_class_loss_equals_weighted_cross_entropy_reference():
    torch.manual_seed(0)
    targets = make_targets()
    perms = [[5, 0, 2, 7], [6, 1]]
    preds = [perfect_prediction(t, p, 8) for t, p in zip(targets, perms)]
    outputs = _outputs_from(preds)
    class_logits = torch.randn(2, 8, NUM_CLASSES + 1)  # matching is decided by the masks
    outputs["pred_logits"] = class_logits
    loss = make_criterion(eos_coef=0.1)(outputs, targets)["loss_ce"]

    numerator = denominator = 0.0
    for b, (target, perm) in enumerate(zip(targets, perms)):
        label_of_query = {q: int(target["labels"][j]) for j, q in enumerate(perm)}
        for q in range(8):
            label = label_of_query.get(q, NUM_CLASSES)
            weight = 0.1 if label == NUM_CLASSES else 1.0
            numerator += weight * -class_logits[b, q].log_softmax(-1)[label].item()
            denominator += weight
    assert loss.item() == pytest.approx(numerator / denominator, rel=1e-5)


def test_mask_losses_match_dense_reference_with_uniform_points():
    """Spatially constant logits: point-sampled BCE/dice converge to their dense values."""
    torch.manual_seed(0)
    target = {"labels": torch.tensor([1, 2]), "masks": rectangle_masks(BOXES[:2])}
    constants = torch.tensor([1.5, -0.5])
    outputs = {
        "pred_logits": torch.zeros(1, 2, NUM_CLASSES + 1),
        "pred_masks": constants.view(1, 2, 1, 1).expand(1, 2, 32, 32).clone(),
    }
    criterion = make_criterion(num_points=20000, importance_sample_ratio=0.0)
    losses = criterion(outputs, [target])

    # Which query gets which target is decided by the matcher; evaluate the reference
    # for the assignment it chose.
    ((rows, cols),) = criterion.matcher(outputs, [target])
    bce = dice = 0.0
    for q, t in zip(rows.tolist(), cols.tolist()):
        c, fraction = constants[q].item(), target["masks"][t].mean().item()
        bce += fraction * math.log1p(math.exp(-c)) + (1 - fraction) * math.log1p(math.exp(c))
        p, area = 1 / (1 + math.exp(-c)), fraction
        dice += 1 - 2 * p * area / (p + area)  # the +1 smoothing is negligible at 20000 points
    assert losses["loss_mask"].item() == pytest.approx(bce / 2, abs=0.02)
    assert losses["loss_dice"].item() == pytest.approx(dice / 2, abs=0.02)


def test_aux_losses_gradients_and_images_without_targets():
    torch.manual_seed(0)
    targets = make_targets()
    targets[1] = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}

    def prediction():
        return {
            "pred_logits": torch.randn(2, 8, NUM_CLASSES + 1, requires_grad=True),
            "pred_masks": torch.randn(2, 8, 16, 16, requires_grad=True),
        }

    outputs = prediction()
    outputs["aux_outputs"] = [prediction(), prediction()]
    criterion = make_criterion(dec_layers=3)
    losses = criterion(outputs, targets)
    assert set(losses) == set(criterion.weight_dict)
    total = sum(criterion.weight_dict[k] * v for k, v in losses.items())
    assert torch.isfinite(total)
    total.backward()
    for out in [outputs, *outputs["aux_outputs"]]:
        assert out["pred_logits"].grad.abs().sum() > 0
        mask_grad = out["pred_masks"].grad
        assert mask_grad[0].abs().sum() > 0  # image with targets
        assert mask_grad[1].abs().sum() == 0  # image without: only "no object" classification


def test_batch_without_any_target():
    outputs = {
        "pred_logits": torch.randn(2, 4, NUM_CLASSES + 1, requires_grad=True),
        "pred_masks": torch.randn(2, 4, 8, 8, requires_grad=True),
    }
    empty = {
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 8, 8, dtype=torch.bool),
    }
    losses = make_criterion()(outputs, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    expected_ce = F.cross_entropy(
        outputs["pred_logits"].flatten(0, 1), torch.full((8,), NUM_CLASSES)
    )
    torch.testing.assert_close(losses["loss_ce"], expected_ce)
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None


def test_targets_of_different_sizes_are_refused():
    """Masks must be padded to the batch (prepare_targets does): a smaller one would not line up."""
    small = {"labels": torch.tensor([2]), "masks": rectangle_masks([(8, 16, 0, 16)], height=16, width=16)}
    large = {"labels": torch.tensor([1]), "masks": rectangle_masks([BOXES[1]])}
    preds = [perfect_prediction(large, [0], 3), perfect_prediction(large, [1], 3)]
    with pytest.raises(ValueError, match=r"target masks of 2 sizes \[\(16, 16\), \(32, 32\)\]"):
        make_criterion()(_outputs_from(preds), [small, large])


def test_half_precision_outputs_give_fp32_losses():
    torch.manual_seed(0)
    targets = make_targets()
    outputs = {
        "pred_logits": torch.randn(2, 8, NUM_CLASSES + 1).half(),
        "pred_masks": torch.randn(2, 8, 16, 16).half(),
    }
    losses = make_criterion()(outputs, targets)
    for value in losses.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)


def test_non_finite_predictions_are_matched_and_give_non_finite_losses():
    # a diverged model: the loss guard, not the matcher, must be the one to stop training
    target = make_targets()[1]
    logits, masks = perfect_prediction(target, [2, 0], 3)
    masks[1] = float("nan")  # query 1 would otherwise be the cheapest for nothing
    logits[1] = float("inf")
    outputs = {"pred_logits": logits[None], "pred_masks": masks[None]}
    [(rows, cols)] = HungarianMatcher(2, 5, 5, num_points=64)(outputs, [target])
    # non-finite costs count as the worst: the finite, perfect queries get the targets
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]

    losses = make_criterion()(outputs, [target])
    assert not torch.isfinite(losses["loss_ce"])


def test_finite_cost_replaces_only_non_finite_entries():
    cost = np.array([[1.0, np.nan], [-np.inf, 3.0], [2.0, np.inf]])
    fixed = finite_cost(cost)
    assert np.isfinite(fixed).all()
    assert fixed[0, 0] == 1.0 and fixed[1, 1] == 3.0 and fixed[2, 0] == 2.0
    assert fixed[0, 1] == fixed[1, 0] == fixed[2, 1] == 4.0  # worse than every finite cost
    assert np.isfinite(finite_cost(np.full((2, 2), np.nan))).all()

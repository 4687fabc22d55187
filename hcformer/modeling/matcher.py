"""Bipartite matching between predicted masks and ground-truth segments (Mask2Former cost)."""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .hierarchy import Hierarchy
from .point_sampling import point_sample


def pairwise_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (T, P) binary targets at the same points.

    Returns:
        (Q, T) cost, the BCE averaged over the points.
    """
    # BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0): two matrix products instead of Q*T*P terms.
    # BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(x) = softplus(-x) + x: one pass of
    # transcendentals over the (Q, P) logits instead of two.
    cost_pos = F.softplus(-logits)
    cost_neg = cost_pos + logits
    cost = cost_pos @ targets.T + cost_neg @ (1 - targets).T
    return cost / logits.shape[1]


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (1 - smoothed dice coefficient) of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (T, P) binary targets at the same points.

    Returns:
        (Q, T) cost in [0, 1).
    """
    probs = logits.sigmoid()
    intersection = probs @ targets.T
    sizes = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (2 * intersection + 1) / (sizes + 1)


def finite_cost(cost: np.ndarray) -> np.ndarray:
    """``cost`` with every NaN or infinite entry made the worst finite one.

    Predictions of a diverged model are NaN: refusing to match them would stop training here,
    with no iteration and no loss terms named, and only on the ranks that diverged (the others
    would wait for them in the next all-reduce). Any assignment will do for such predictions:
    their losses come out NaN, and the loss guard stops every rank with a full report.
    """
    finite = np.isfinite(cost)
    if finite.all():
        return cost
    worst = cost[finite].max() + 1.0 if finite.any() else 0.0
    return np.where(finite, cost, worst)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of the Q queries of each image to its T ground-truth segments.

    The cost of matching query q with target t is
    ``-cost_class * p_q(class_t) + cost_mask * BCE(q, t) + cost_dice * dice(q, t)``,
    with both mask terms evaluated on ``num_points`` random points shared by all predictions and
    targets of the image. The assignment minimises the total cost (Hungarian algorithm); queries
    left unmatched are supervised as "no object" by the criterion.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        hierarchy: Optional[Hierarchy] = None,
        generators: Optional[Sequence[torch.Generator]] = None,
    ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1) class logits and "pred_masks" (B, Q, H, W) mask
                logits; other keys are ignored.
            targets: B dicts with "labels" (T_b,) int64 and "masks" (T_b, H', W') binary masks;
                H', W' may differ from H, W (points are in normalised coordinates).
            hierarchy: if given, "pred_masks" are on its coarsest grid and are decoded here,
                without autograd: the full maps live only while this prediction is matched.
            generators: one per image, where its points are drawn from (torch's global
                generator if None).

        Returns:
            B pairs (query_indices, target_indices) of equal length min(Q, T_b), int64 on the
            CPU, where query_indices[i] is matched with target_indices[i].
        """
        pred_logits = outputs["pred_logits"]
        pred_masks = outputs["pred_masks"]
        if hierarchy is not None:
            pred_masks = hierarchy.decode(pred_masks)
        # Under AMP the matrix products below would run in half precision even on fp32 inputs.
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            return [
                self._match_image(pred_logits[b], pred_masks[b], target, generators[b] if generators else None)
                for b, target in enumerate(targets)
            ]

    def _match_image(
        self, logits: Tensor, masks: Tensor, target: Dict[str, Tensor], generator: Optional[torch.Generator]
    ) -> Tuple[Tensor, Tensor]:
        """Match one image: logits (Q, K+1), masks (Q, H, W)."""
        labels = target["labels"]
        if len(labels) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty.clone()

        # fp32 throughout: the costs of similar masks differ in the low bits, which half
        # precision would round away, making the assignment arbitrary.
        probs = logits.float().softmax(-1)  # (Q, K+1)
        cost_class = -probs[:, labels]  # (Q, T)

        masks = masks.float()[:, None]  # (Q, 1, H, W)
        tgt_masks = target["masks"].to(masks)[:, None]  # (T, 1, H', W')
        points = torch.rand(1, self.num_points, 2, device=masks.device, generator=generator)
        pred_points = point_sample(masks, points.expand(len(masks), -1, -1), align_corners=False)[:, 0]  # (Q, P)
        target_points = point_sample(tgt_masks, points.expand(len(tgt_masks), -1, -1), align_corners=False)[:, 0]

        cost = (
            self.cost_class * cost_class
            + self.cost_mask * pairwise_sigmoid_ce_cost(pred_points, target_points)
            + self.cost_dice * pairwise_dice_cost(pred_points, target_points)
        )
        rows, cols = linear_sum_assignment(finite_cost(cost.cpu().numpy()))
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )

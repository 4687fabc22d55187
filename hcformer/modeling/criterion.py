"""Set-prediction loss of Mask2Former: class + point-sampled mask losses on matched pairs."""

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor, nn

from .hierarchy import Hierarchy
from .matcher import HungarianMatcher
from .point_sampling import get_uncertain_point_coords_with_randomness, point_sample

Indices = List[Tuple[Tensor, Tensor]]


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Binary cross-entropy averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        logits: (M, P) mask logits at P points.
        targets: (M, P) binary targets.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Smoothed dice loss summed over masks, divided by ``num_masks``.

    Args:
        logits: (M, P) mask logits at P points.
        targets: (M, P) binary targets.
    """
    probs = logits.sigmoid()
    intersection = (probs * targets).sum(-1)
    sizes = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (2 * intersection + 1) / (sizes + 1)
    return loss.sum() / num_masks


def logit_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of binary logits: highest (0) on the decision boundary, -|x| elsewhere."""
    return -logits.abs()


def build_weight_dict(
    class_weight: float,
    mask_weight: float,
    dice_weight: float,
    dec_layers: int,
    deep_supervision: bool,
) -> Dict[str, float]:
    """Weights of every loss returned by :class:`SetCriterion`.

    ``dec_layers`` counts the predictions of the decoder (``MODEL.MASK_FORMER.DEC_LAYERS``,
    i.e. decoder layers + the prediction from the learnable queries); with deep supervision the
    ``dec_layers - 1`` auxiliary predictions get copies suffixed ``_0`` .. ``_{dec_layers - 2}``.
    """
    final = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(final)
    if deep_supervision:
        for i in range(dec_layers - 1):
            weights.update({f"{name}_{i}": w for name, w in final.items()})
    return weights


class SetCriterion(nn.Module):
    """Losses of a set of (class, mask) predictions against the ground-truth segments.

    Each prediction (final and auxiliary) is matched to the targets by ``matcher``; then

    - ``loss_ce``: cross-entropy over K + 1 classes for every query, unmatched queries labelled
      "no object" (index K) and down-weighted by ``eos_coef`` (a weighted mean, its weights
      summed over all processes);
    - ``loss_mask`` / ``loss_dice``: sigmoid BCE / dice between matched masks, evaluated on
      ``num_points`` points per mask chosen by importance sampling on the predicted logits.

    Mask losses are normalised by the number of target masks per worker (averaged over
    distributed workers, at least 1). The returned losses are unweighted: multiply them by
    ``self.weight_dict`` (losses absent from it are meant to be dropped).

    With ``point_seed``, the random points of an image (matching and losses, every layer) come
    from a generator of its own, seeded with a per-step seed drawn from ``point_seed``'s stream
    plus the image's index in the batch of all processes: the points of a global batch are the
    same whether one process or several compute it, so N processes train the weights of one
    (tests/test_training_recovery.py). Without it they come from torch's global generator.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Dict[str, float],
        eos_coef: float,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        point_seed: Optional[int] = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

        # A buffer (not a constant) so that it follows .to(device) and sits in checkpoints as
        # `criterion.empty_weight`, like the original.
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        # the stream of per-step seeds: the same on every process; in checkpoints via the trainer
        self.point_generator = None if point_seed is None else torch.Generator().manual_seed(point_seed)

    def forward(
        self,
        outputs: Dict[str, object],
        targets: List[Dict[str, Tensor]],
        hierarchy: Optional[Hierarchy] = None,
        decode_all: bool = False,
    ) -> Dict[str, Tensor]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, H, W) mask logits and,
                optionally, "aux_outputs": a list of dicts with the same two keys.
            targets: B dicts with "labels" (T_b,) int64 in [0, K) and "masks" (T_b, H', W')
                binary (bool or float) masks, all of the batch's padded size. H', W' may
                differ from H, W: predictions and targets are compared at normalised points.
            hierarchy: if given, every "pred_masks" is on the coarsest grid of this hierarchy
                and only what the losses sample is decoded: all queries without autograd
                to match them, the matched ones with autograd for the mask losses. The
                losses are those of decoding every prediction first, for a fraction of the
                memory (``MODEL.HC.POINT_DECODING``).
            decode_all: with ``hierarchy``, decode every prediction's masks first (with
                autograd) and compute the losses on them: the same values as without, for the
                memory of all B × Q × layers maps at stride 4 (MODEL.HC.POINT_DECODING False,
                the baseline of tests/test_point_decoding.py and benchmarks/bench_model.py).

        Returns:
            "loss_ce", "loss_mask", "loss_dice" (scalars) for the final prediction, plus
            "loss_ce_i", ... for the i-th auxiliary prediction.
        """
        if decode_all and hierarchy is not None:
            outputs, hierarchy = decode_every_prediction(outputs, hierarchy), None
        sizes = {tuple(t["masks"].shape[-2:]) for t in targets}
        if len(sizes) > 1:
            raise ValueError(f"SetCriterion: target masks of {len(sizes)} sizes {sorted(sizes)}; pad them to "
                             "the batch's padded size, as HCFormer.prepare_targets does")
        device = outputs["pred_logits"].device
        num_masks = self._num_masks(targets, device=device)
        generators = self.image_generators(len(targets), device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses(final, targets, num_masks, hierarchy, generators)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses(aux, targets, num_masks, hierarchy, generators)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def image_generators(self, num_images: int, device: torch.device) -> Optional[List[torch.Generator]]:
        """One generator per image of this process's batch (see the class docstring), or None."""
        if self.point_generator is None:
            return None
        step_seed = int(torch.randint(2**62, (), generator=self.point_generator))
        first = comm.get_rank() * num_images  # every process holds IMS_PER_BATCH / world size images
        return [torch.Generator(device=device).manual_seed(step_seed + first + i) for i in range(num_images)]

    def _losses(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        num_masks: float,
        hierarchy: Optional[Hierarchy],
        generators: Optional[List[torch.Generator]] = None,
    ) -> Dict[str, Tensor]:
        indices = self.matcher(outputs, targets, hierarchy, generators)
        losses = self.loss_labels(outputs, targets, indices)
        losses.update(self.loss_masks(outputs, targets, indices, num_masks, hierarchy, generators))
        return losses

    @staticmethod
    def _num_masks(targets: List[Dict[str, Tensor]], device: torch.device) -> float:
        num_masks = torch.tensor(
            float(sum(len(t["labels"]) for t in targets)), dtype=torch.float, device=device
        )
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(num_masks)
        return torch.clamp(num_masks / world_size, min=1).item()

    def loss_labels(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]], indices: Indices
    ) -> Dict[str, Tensor]:
        """Weighted cross-entropy of all B×Q queries; unmatched ones target "no object"."""
        logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = _prediction_index(indices)
        matched_labels = [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        target_classes[batch_idx, query_idx] = torch.cat(matched_labels).to(logits.device)
        # The weighted mean Σ w·CE / Σ w, with Σ w over the queries of all processes (divided
        # by their number), as the mask losses' num_masks: the loss of a batch is then the same
        # however it is split over processes. (The original divides by its own process's Σ w.)
        summed = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight, reduction="sum")
        total_weight = self.empty_weight[target_classes].sum().detach()
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(total_weight)
        return {"loss_ce": summed / (total_weight / world_size)}

    def loss_masks(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices: Indices,
        num_masks: float,
        hierarchy: Optional[Hierarchy] = None,
        generators: Optional[List[torch.Generator]] = None,
    ) -> Dict[str, Tensor]:
        """Point-sampled BCE and dice between matched predicted and target masks."""
        pred_masks = outputs["pred_masks"]  # (B, Q, H, W), or the coarsest grid of ``hierarchy``
        batch_idx, query_idx = _prediction_index(indices)
        if len(batch_idx) == 0:
            # No target in the batch: zero losses that still depend on the masks, so every
            # parameter gets a (zero) gradient, as distributed data parallel expects.
            zero = pred_masks.sum() * 0.0
            if hierarchy is not None:  # ... the assignments included
                zero = zero + hierarchy.decode(pred_masks[:, :1]).sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}

        batch_idx, query_idx = batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)
        if hierarchy is None:
            src = pred_masks[batch_idx, query_idx]
        else:
            src = hierarchy.decode_selected(pred_masks, batch_idx, query_idx)
        src = src.float()[:, None]  # (M, 1, H, W)
        matched_targets = [
            t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)
        ]
        tgt = torch.cat(matched_targets).to(src)[:, None]  # (M, 1, H', W')

        with torch.no_grad():
            # Where to look depends on the prediction only; sampling is not differentiated.
            # the matched masks are in image order: each image's points from its own generator,
            # or all of them in one draw from the global one
            per_image = [len(query) for query, _ in indices] if generators else [len(src)]
            points = torch.cat([
                get_uncertain_point_coords_with_randomness(
                    masks, logit_uncertainty, self.num_points, self.oversample_ratio,
                    self.importance_sample_ratio, generator,
                )
                for masks, generator in zip(src.split(per_image), generators or [None])
                if len(masks)
            ])
            point_labels = point_sample(tgt, points, align_corners=False)[:, 0]  # (M, P)
        point_logits = point_sample(src, points, align_corners=False)[:, 0]  # (M, P)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )


def decode_every_prediction(outputs: Dict[str, object], hierarchy: Hierarchy) -> Dict[str, object]:
    """``outputs`` (final and auxiliary predictions) with every "pred_masks" decoded through
    ``hierarchy``, in one decode (the assignments are read once); the input is not changed."""
    predictions = [outputs] + list(outputs.get("aux_outputs", []))
    num_queries = outputs["pred_masks"].shape[1]
    stacked = torch.cat([p["pred_masks"] for p in predictions], dim=1)
    decoded = [{**p, "pred_masks": masks}
               for p, masks in zip(predictions, hierarchy.decode(stacked).split(num_queries, dim=1))]
    return {**decoded[0], "aux_outputs": decoded[1:]}


def _prediction_index(indices: Indices) -> Tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched prediction, each (M,) int64."""
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx, query_idx

"""HCFormer: backbone with clustering → decoder on the coarsest map → masks decoded by the hierarchy."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.structures import ImageList
from torch import Tensor, nn

from hcformer.engine.loss_guard import check_finite_losses

from .criterion import SetCriterion, build_weight_dict
from .hierarchy import Hierarchy
from .matcher import HungarianMatcher
from .postprocess import (
    instance_inference,
    level_clusterings,
    level_strides,
    panoptic_inference,
    query_clustering,
    resize_to_output,
    semantic_inference,
)

# what ``HCFormer.forward(..., clusterings=ALL_CLUSTERINGS)`` returns: every level and the queries
ALL_CLUSTERINGS = "all"


@META_ARCH_REGISTRY.register()
class HCFormer(nn.Module):
    """Unified panoptic / instance / semantic segmentation by hierarchical clustering.

    Training returns the loss dict (set criterion of every decoder layer + the scale
    regulariser λ_reg·Σ_i|s_i|); inference returns one dict per image with "sem_seg",
    "panoptic_seg" and / or "instances", as detectron2 evaluators expect, and on request the
    clusterings of that forward pass (see :meth:`forward`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        scale_reg_weight: float,
        point_decoding: bool = True,
        clusterings: Optional[Union[str, Sequence[str]]] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.metadata = metadata
        self.size_divisibility = max(size_divisibility, getattr(backbone, "size_divisibility", 0))
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.test_topk_per_image = test_topk_per_image
        self.scale_reg_weight = scale_reg_weight
        self.point_decoding = point_decoding
        self.clusterings = clusterings  # what every inference returns unless asked otherwise
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("MODEL.MASK_FORMER.TEST: at least one of SEMANTIC_ON / PANOPTIC_ON / INSTANCE_ON must be True")

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
        )
        weight_dict = build_weight_dict(
            mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.DEC_LAYERS, mf.DEEP_SUPERVISION
        )
        criterion = SetCriterion(
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            matcher=matcher,
            weight_dict=weight_dict,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
            # with a fixed SEED, the points do not depend on how many processes train
            point_seed=cfg.SEED if cfg.SEED >= 0 else None,
        )
        test = mf.TEST
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "metadata": metadata,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,  # the instance top-k, as the original
            "scale_reg_weight": cfg.MODEL.HC.L1_WEIGHT,
            "point_decoding": cfg.MODEL.HC.POINT_DECODING,
            # HierarchyEvaluator scores every clustering of the forward pass it evaluates
            "clusterings": ALL_CLUSTERINGS if cfg.TEST.HIERARCHY_EVAL else None,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def preprocess(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def run(self, images: ImageList) -> Tuple[Dict[str, object], Hierarchy]:
        """Backbone + head: the decoder's outputs, mask logits on the coarsest grid, and the
        hierarchy that decodes them (``hierarchy.decode(outputs["pred_masks"])``: stride 4)."""
        features = self.backbone(images.tensor, image_sizes=images.image_sizes)
        return self.sem_seg_head(features), features["assign"]

    def forward(self, batched_inputs: List[Dict], clusterings: Optional[Union[str, Sequence[str]]] = None):
        """Losses (training) or one result dict per image (inference).

        Args:
            clusterings: inference only: also return, per image, "clusterings": {name: (height,
                width) int64 cluster ids} for each name — "level<k>" for level k of the
                hierarchy (``postprocess.level_clusterings``), "queries" for the query
                clustering of appendix E (``postprocess.query_clustering``), "levels" for every
                level, "all" for every level and the queries — and "level_strides": {k: grid
                stride of level k, None for segments}; from the same forward pass as the
                predictions. Default: the model's ``clusterings`` ("all" with
                TEST.HIERARCHY_EVAL, else none); ``[]`` asks for none.
        """
        images = self.preprocess(batched_inputs)
        outputs, hierarchy = self.run(images)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            losses = self.criterion(outputs, targets, hierarchy, decode_all=not self.point_decoding)
            weights = self.criterion.weight_dict
            losses = {k: v * weights[k] for k, v in losses.items() if k in weights}
            losses["loss_scale_reg"] = self.scale_reg_weight * self.scale_regulariser()
            check_finite_losses(losses)  # before backward: see hcformer.engine.loss_guard
            return losses
        requested = self.clusterings if clusterings is None else clusterings
        return self.inference(batched_inputs, images, outputs, hierarchy, requested)

    def scale_regulariser(self) -> Tensor:
        """Σ_i |s_i| over the clustering scales (the paper's L_reg; the original used |Σ_i s_i|)."""
        scales = [p for n, p in self.backbone.named_parameters() if n.endswith(".temp")]
        if not scales:
            return self.pixel_mean.new_zeros(())
        return torch.cat(scales).abs().sum()

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, Tensor]]:
        """Per image: labels (n,) and masks (n, H_pad, W_pad) zero-padded to the batch size."""
        H, W = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            masks = inst.gt_masks
            masks = getattr(masks, "tensor", masks)  # BitMasks or a tensor
            padded = masks.new_zeros((masks.shape[0], H, W))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    # ------------------------------------------------------------------ inference
    def inference(
        self,
        batched_inputs: List[Dict],
        images: ImageList,
        outputs: Dict[str, object],
        hierarchy: Hierarchy,
        clusterings: Optional[Union[str, Sequence[str]]] = None,
    ) -> List[Dict]:
        """Masks decoded through the hierarchy to stride 4 (eq. (5)), upsampled to the padded
        size, then per image: crop and resize to the output size, and post-processing."""
        mask_cls_results = outputs["pred_logits"]
        mask_pred_results = F.interpolate(
            hierarchy.decode(outputs["pred_masks"]), size=images.tensor.shape[-2:], mode="bilinear",
            align_corners=False,
        )
        levels, queries = self._parse_clusterings(clusterings, hierarchy)
        output_sizes = [(x.get("height", size[0]), x.get("width", size[1]))
                        for x, size in zip(batched_inputs, images.image_sizes)]
        level_maps = level_clusterings(hierarchy, levels, tuple(images.tensor.shape[-2:]), images.image_sizes,
                                       output_sizes)
        thing_ids = set(getattr(self.metadata, "thing_dataset_id_to_contiguous_id", {}).values())
        num_classes = self.sem_seg_head.predictor.class_embed.out_features - 1
        results = []
        for mask_cls, mask_pred, image_size, (height, width), maps in zip(
            mask_cls_results, mask_pred_results, images.image_sizes, output_sizes, level_maps
        ):
            r = {}
            if self.sem_seg_postprocess_before_inference:
                mask_pred = resize_to_output(mask_pred, image_size, height, width)
                mask_cls = mask_cls.to(mask_pred)
            # The semantic output needs the sigmoid of every mask: share it with the others,
            # which otherwise compute it for the queries they keep only.
            mask_probs = mask_pred.sigmoid() if self.semantic_on else None
            if self.semantic_on:
                sem = semantic_inference(mask_cls, mask_pred, mask_probs)
                if not self.sem_seg_postprocess_before_inference:
                    sem = resize_to_output(sem, image_size, height, width)
                r["sem_seg"] = sem
            if self.panoptic_on:
                r["panoptic_seg"] = panoptic_inference(
                    mask_cls, mask_pred, num_classes, self.object_mask_threshold, self.overlap_threshold,
                    thing_ids, mask_probs,
                )
            if self.instance_on:
                r["instances"] = instance_inference(
                    mask_cls, mask_pred, num_classes, self.num_queries, self.test_topk_per_image,
                    thing_ids, self.panoptic_on, mask_probs,
                )
            if levels or queries:
                if queries:
                    if self.sem_seg_postprocess_before_inference:
                        maps["queries"] = query_clustering(mask_cls, mask_pred, mask_probs)
                    else:  # masks still at the padded size
                        maps["queries"] = query_clustering(mask_cls, resize_to_output(mask_pred, image_size, height, width))
                r["clusterings"] = maps
                r["level_strides"] = level_strides(hierarchy)
            results.append(r)
        return results

    @staticmethod
    def _parse_clusterings(requested: Optional[Union[str, Sequence[str]]], hierarchy: Hierarchy) -> Tuple[List[int], bool]:
        """("all" | names: "levels", "level2", "queries") → (levels, whether the queries')."""
        if requested is None:
            return [], False
        names = [requested] if isinstance(requested, str) else list(requested)
        every_level = list(range(hierarchy.num_levels + 1))
        levels = []
        for name in names:
            if name in (ALL_CLUSTERINGS, "levels"):
                levels += every_level
            elif name.startswith("level") and name[5:].isdigit():
                levels.append(int(name[5:]))
            elif name != "queries":
                raise ValueError(f"clusterings: {name!r} is none of 'all', 'levels', 'queries', 'level<k>' "
                                 f"(k = 0..{hierarchy.num_levels})")
        return sorted(set(levels)), ALL_CLUSTERINGS in names or "queries" in names


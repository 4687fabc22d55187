"""MODEL.EXPEDIT.*: Expedit on a trained HC-Swin, by config only (defaults: the paper's COCO
panoptic setting for Mask2Former Swin-L, 12 × 12 windows)."""
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from hcformer.modeling.backbone.swin import HCSwinTransformer

from .swin import expedite_swin


def add_expedit_config(cfg: CN) -> None:
    """Add MODEL.EXPEDIT to ``cfg`` (after ``add_hcformer_config``)."""
    cfg.MODEL.EXPEDIT = CN()
    cfg.MODEL.EXPEDIT.ENABLED = False
    cfg.MODEL.EXPEDIT.STAGE = 2  # 0-based Swin stage that is clustered (the third, as in the paper)
    # α: blocks of the whole backbone before the clustering; must lie inside STAGE
    # (Swin-L 2-2-18-2: 10 = after the 6th of the third stage's 18 blocks)
    cfg.MODEL.EXPEDIT.ALPHA = 10
    cfg.MODEL.EXPEDIT.CLUSTER_WINDOW = 8  # k: clusters per window side (K = MODEL.SWIN.WINDOW_SIZE)
    cfg.MODEL.EXPEDIT.LAMBDA = 7  # λ: candidate centres per axis around a token's initial cell (odd)
    cfg.MODEL.EXPEDIT.KAPPA = 5  # κ: k-means iterations
    cfg.MODEL.EXPEDIT.TEMPERATURE = 0.05  # t of exp(-t·‖x - c‖²) (the paper's 1/τ, τ = 20)
    cfg.MODEL.EXPEDIT.TOPK = 10  # reconstruction weights kept per token


def apply_expedit(model: nn.Module, cfg: CN) -> nn.Module:
    """Expedite ``model``'s HC-Swin backbone in place when MODEL.EXPEDIT.ENABLED.

    ``model`` is a detectron2 model with a ``backbone`` attribute (HCFormer, HCFormer+) or
    the backbone itself. Call it before or after loading the weights: the state dict is the
    same either way.
    """
    e = cfg.MODEL.EXPEDIT
    if not e.ENABLED:
        return model
    backbone = getattr(model, "backbone", model)
    expedite_swin(
        backbone,
        stage=e.STAGE,
        alpha=e.ALPHA,
        cluster_window=e.CLUSTER_WINDOW,
        kernel=e.LAMBDA,
        iterations=e.KAPPA,
        temperature=e.TEMPERATURE,
        topk=e.TOPK,
    )
    return model


@BACKBONE_REGISTRY.register()
class ExpeditHCSwinTransformer(HCSwinTransformer):
    """``MODEL.BACKBONE.NAME: "ExpeditHCSwinTransformer"``: ``HCSwinTransformer`` with
    MODEL.EXPEDIT applied when ENABLED; same state dict, so the HC-Swin checkpoints load."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__(cfg, input_shape)
        apply_expedit(self, cfg)

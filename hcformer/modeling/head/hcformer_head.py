"""HCFormerHead: the segmentation head, a transformer decoder on the coarsest feature map."""
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .hc_transformer_decoder import build_transformer_decoder


@SEM_SEG_HEADS_REGISTRY.register()
class HCFormerHead(nn.Module):
    """Runs the decoder (``predictor``) on MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE.

    There is no pixel decoder: mask logits come out at the feature's stride (32) and are
    decoded to stride 4 by the meta-architecture through the backbone's hierarchy.
    The input channels are read from the backbone; MODEL.SEM_SEG_HEAD.CONVS_DIM (the
    original's way of giving them) is accepted but not needed.
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        self.in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if self.in_feature not in input_shape:
            raise KeyError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE {self.in_feature!r} is not an output of the "
                f"backbone (it has {sorted(input_shape)}); check MODEL.*.OUT_FEATURES"
            )
        self.predictor = build_transformer_decoder(cfg, input_shape[self.in_feature].channels)

    def forward(self, features: Dict[str, object]) -> Dict[str, object]:
        return self.predictor(features[self.in_feature])

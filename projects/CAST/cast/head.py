"""HCFormer's head on CAST tokens: queries attend to the coarsest region tokens.

The tokens come as a (B, C, N, 1) map; what a grid would give for free, their position
encodings, are the sine encodings of the stride-8 grid averaged over every token's pixels
through the hierarchy (``CASTHierarchy.pool``). Tokens that stand for no pixel are never
attended to. ``CASTFormerHead`` hands the hierarchy to the decoder, which HCFormerHead (one
feature map in) cannot.
"""
import math
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor

from hcformer.modeling.head.hc_transformer_decoder import TRANSFORMER_DECODER_REGISTRY, HCTransformerDecoder
from hcformer.modeling.head.hcformer_head import HCFormerHead

from .hierarchy import CASTHierarchy

__all__ = ["CASTTransformerDecoder", "CASTFormerHead"]


@TRANSFORMER_DECODER_REGISTRY.register()
class CASTTransformerDecoder(HCTransformerDecoder):
    """HCFormer's masked-attention decoder over a set of tokens with pooled position encodings."""

    def forward(self, x: Tensor, hierarchy: CASTHierarchy) -> Dict[str, object]:  # type: ignore[override]
        """x: (B, C_in, N, 1) coarsest tokens → predictions of every layer, masks (B, Q, N, 1)."""
        memory = self.input_proj(x)
        # encodings of the stride-8 grid even when masks decode to pixels: 64× less to pool
        factor = max(1, 8 // hierarchy.cell_stride)
        grid = [math.ceil(n / factor) for n in hierarchy.cell_labels.shape[-2:]]
        pe = self.pe_layer(memory.new_empty(x.shape[0], 1, *grid))  # (B, hidden, h, w)
        pos = hierarchy.pool(pe).flatten(2).permute(2, 0, 1)  # (N, B, hidden)
        return self.decode(memory, self.mask_proj(x), pos, hierarchy.coarsest_valid)


@SEM_SEG_HEADS_REGISTRY.register()
class CASTFormerHead(HCFormerHead):
    """``MODEL.SEM_SEG_HEAD.NAME: "CASTFormerHead"``: the decoder on the coarsest CAST tokens and
    their hierarchy (``features["assign"]``). Parameters under ``predictor.*`` as HCFormerHead's."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__(cfg, input_shape)
        if not isinstance(self.predictor, CASTTransformerDecoder):
            raise ValueError("CASTFormerHead needs MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME 'CASTTransformerDecoder' "
                             f"(or a subclass), got {cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME!r}")

    def forward(self, features: Dict[str, object]) -> Dict[str, object]:
        return self.predictor(features[self.in_feature], features["assign"])

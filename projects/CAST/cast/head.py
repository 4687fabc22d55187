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
from torch import Tensor, nn

from hcformer.modeling.head.hc_transformer_decoder import TRANSFORMER_DECODER_REGISTRY, HCTransformerDecoder

from .hierarchy import CASTHierarchy

__all__ = ["CASTTransformerDecoder", "CASTFormerHead"]


@TRANSFORMER_DECODER_REGISTRY.register()
class CASTTransformerDecoder(HCTransformerDecoder):
    """HCFormer's masked-attention decoder over a set of tokens with pooled position encodings."""

    def attention_mask_with_validity(self, masks: Tensor, valid: Tensor) -> Tensor:
        """(B, Q, N, 1) mask logits, (B, N) valid → bool (B·heads, Q, N), True = blocked."""
        empty = ~valid[:, None]
        blocked = (masks.detach().flatten(2).sigmoid() < 0.5) | empty
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)  # a query blocked everywhere sees all
        blocked = blocked | empty  # even a query that would see nothing skips empty tokens
        return blocked.repeat_interleave(self.num_heads, dim=0)

    def forward(self, x: Tensor, hierarchy: CASTHierarchy) -> Dict[str, object]:  # type: ignore[override]
        """x: (B, C_in, N, 1) coarsest tokens → predictions of every layer, masks (B, Q, N, 1)."""
        B = x.shape[0]
        mask_features = self.mask_proj(x)
        memory = self.input_proj(x)
        # encodings of the stride-8 grid even when masks decode to pixels: 64× less to pool
        factor = max(1, 8 // hierarchy.cell_stride)
        grid = [math.ceil(n / factor) for n in hierarchy.cell_labels.shape[-2:]]
        pe = self.pe_layer(memory.new_empty(B, 1, *grid))  # (B, hidden, h, w)
        pos = hierarchy.pool(pe.to(memory.dtype)).flatten(2).permute(2, 0, 1)  # (N, B, hidden)
        memory = memory.flatten(2).permute(2, 0, 1) + self.level_embed.weight[0][None, None]
        valid = hierarchy.coarsest_valid
        query_pos = self.query_embed.weight[:, None].expand(-1, B, -1)
        queries = self.query_feat.weight[:, None].expand(-1, B, -1)

        logits, masks = self.predict(queries, mask_features)
        all_logits, all_masks = [logits], [masks]
        for cross, self_attn, ffn in zip(self.transformer_cross_attention_layers,
                                         self.transformer_self_attention_layers, self.transformer_ffn_layers):
            attn_mask = self.attention_mask_with_validity(masks, valid)
            queries = cross(queries, memory, attn_mask=attn_mask, pos=pos, query_pos=query_pos)
            queries = self_attn(queries, pos=query_pos)
            queries = ffn(queries)
            logits, masks = self.predict(queries, mask_features)
            all_logits.append(logits)
            all_masks.append(masks)
        return self.pack(all_logits, all_masks)


@SEM_SEG_HEADS_REGISTRY.register()
class CASTFormerHead(nn.Module):
    """``MODEL.SEM_SEG_HEAD.NAME: "CASTFormerHead"``: the decoder on the coarsest CAST tokens and
    their hierarchy (``features["assign"]``). Parameters under ``predictor.*`` as HCFormerHead's."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        mf = cfg.MODEL.MASK_FORMER
        self.in_feature = mf.TRANSFORMER_IN_FEATURE
        if self.in_feature not in input_shape:
            raise KeyError(f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE {self.in_feature!r} is not an output of "
                           f"the backbone (it has {sorted(input_shape)})")
        decoder = TRANSFORMER_DECODER_REGISTRY.get(mf.TRANSFORMER_DECODER_NAME)
        if not issubclass(decoder, CASTTransformerDecoder):
            raise ValueError("CASTFormerHead needs MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME "
                             f"'CASTTransformerDecoder' (or a subclass), got {mf.TRANSFORMER_DECODER_NAME!r}")
        self.predictor = decoder(
            in_channels=input_shape[self.in_feature].channels,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            hidden_dim=mf.HIDDEN_DIM,
            num_queries=mf.NUM_OBJECT_QUERIES,
            nheads=mf.NHEADS,
            dim_feedforward=mf.DIM_FEEDFORWARD,
            num_layers=mf.DEC_LAYERS - 1,  # + the prediction from the learnable queries
            pre_norm=mf.PRE_NORM,
            mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            enforce_input_project=mf.ENFORCE_INPUT_PROJ,
            dropout=mf.DROPOUT,
        )

    def forward(self, features: Dict[str, object]) -> Dict[str, object]:
        return self.predictor(features[self.in_feature], features["assign"])

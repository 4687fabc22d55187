"""Transformer decoders of HCFormer: masked attention (default) and DETR-style (MaskFormer).

Both read the single coarsest feature map (stride 32) and predict, for every layer, class
logits (B, Q, K+1) and mask logits at stride 32, (B, Q, h, w) = mask embeddings · mask
features (eq. (4) without the sigmoid). The meta-architecture decodes them to stride 4
through the backbone's hierarchy.
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.utils.registry import Registry
from fvcore.nn.weight_init import c2_xavier_fill
from torch import Tensor, nn

from hcformer.layers.position_encoding import PositionEmbeddingSine
from hcformer.layers.transformer_layers import (
    CrossAttentionLayer,
    DecoderLayer,
    EncoderLayer,
    FFNLayer,
    SelfAttentionLayer,
    xavier_init_,
)

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = "Transformer decoders of HCFormer (MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME)."


class MLP(nn.Module):
    """Linear layers with ReLU in between; ``layers.{i}`` as in the original checkpoints."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x


class _QueryDecoderBase(nn.Module):
    """What both decoders share: projections of the feature map and the prediction heads."""

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int, mask_dim: int, enforce_input_project: bool):
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = nn.Conv2d(in_channels, hidden_dim, 1)
            c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        # per-pixel mask features at stride 32: no pixel decoder, one 1×1 conv
        self.mask_proj = nn.Conv2d(in_channels, mask_dim, 1)
        c2_xavier_fill(self.mask_proj)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @property
    def output_norm(self) -> nn.LayerNorm:
        """The LayerNorm applied to the queries before the prediction heads (each decoder
        keeps it where the original checkpoints have it)."""
        raise NotImplementedError

    def predict(self, queries: Tensor, mask_features: Tensor):
        """queries (Q, B, C), mask_features (B, D, h, w) → logits (B, Q, K+1), masks (B, Q, h, w)."""
        x = self.output_norm(queries).transpose(0, 1)
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_embed(x), mask_features)
        return self.class_embed(x), masks

    @staticmethod
    def pack(predictions: List[Tuple[Tensor, Tensor]]) -> Dict[str, object]:
        """(logits, masks) of every layer → the last as the output, the earlier ones as ``aux_outputs``."""
        logits, masks = predictions[-1]
        return {
            "pred_logits": logits,
            "pred_masks": masks,
            "aux_outputs": [{"pred_logits": a, "pred_masks": b} for a, b in predictions[:-1]],
        }


@TRANSFORMER_DECODER_REGISTRY.register()
class HCTransformerDecoder(_QueryDecoderBase):
    """Masked-attention decoder (Mask2Former's layer, single scale).

    Each layer: masked cross-attention to the stride-32 features → self-attention → FFN.
    The attention mask of a layer comes from the previous layer's mask prediction at stride
    32 (sigmoid < 0.5 blocked; a query that would see nothing sees everything).
    ``num_layers`` = DEC_LAYERS - 1; one more prediction comes from the learnable queries.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, num_layers: int = 8, pre_norm: bool = False,
                 mask_dim: int = 256, enforce_input_project: bool = False, dropout: float = 0.0):
        super().__init__(in_channels, num_classes, hidden_dim, mask_dim, enforce_input_project)
        self.num_heads = nheads
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(num_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(1, hidden_dim)

    @property
    def output_norm(self) -> nn.LayerNorm:
        return self.decoder_norm

    def attention_mask(self, masks: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """(B, Q, h, w) mask logits and (B, h·w) bool key validity (None: all valid) →
        bool (B·heads, Q, h·w), True = blocked. Invalid keys are blocked for every query."""
        blocked = masks.detach().flatten(2).sigmoid() < 0.5
        if valid is not None:  # before the test below: a query that sees only invalid keys sees nothing
            blocked = blocked | ~valid[:, None]
        # a query blocked everywhere attends everywhere instead (an empty row would be NaN);
        # an elementwise AND rather than an in-place boolean index, which ONNX Runtime lacks
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        if valid is not None:  # "everywhere" is every valid key
            blocked = blocked | ~valid[:, None]
        return blocked.repeat_interleave(self.num_heads, dim=0)

    def forward(self, x: Tensor) -> Dict[str, object]:
        """x: (B, C_in, h, w) coarsest features → predictions of every layer."""
        memory = self.input_proj(x)
        pos = self.pe_layer(memory).flatten(2).permute(2, 0, 1)  # (hw, B, C)
        return self.decode(memory, self.mask_proj(x), pos)

    def decode(self, memory: Tensor, mask_features: Tensor, pos: Tensor,
               valid: Optional[Tensor] = None) -> Dict[str, object]:
        """The layers on projected keys of any layout (a grid or a set of tokens).

        Args:
            memory: (B, hidden, h, w) projected features (``input_proj``), the keys and values.
            mask_features: (B, mask_dim, h, w) (``mask_proj``); masks come out on this layout.
            pos: (h·w, B, hidden) position encodings of the keys.
            valid: (B, h·w) bool, False for keys that no query may attend to; None: all valid.
        """
        B = memory.shape[0]
        memory = memory.flatten(2).permute(2, 0, 1) + self.level_embed.weight[0][None, None]
        query_pos = self.query_embed.weight[:, None].expand(-1, B, -1)
        queries = self.query_feat.weight[:, None].expand(-1, B, -1)

        predictions = [self.predict(queries, mask_features)]
        for cross, self_attn, ffn in zip(self.transformer_cross_attention_layers,
                                         self.transformer_self_attention_layers, self.transformer_ffn_layers):
            attn_mask = self.attention_mask(predictions[-1][1], valid)  # from the latest masks
            queries = cross(queries, memory, attn_mask=attn_mask, pos=pos, query_pos=query_pos)
            queries = self_attn(queries, pos=query_pos)
            queries = ffn(queries)
            predictions.append(self.predict(queries, mask_features))
        return self.pack(predictions)


@TRANSFORMER_DECODER_REGISTRY.register()
class HCStandardTransformerDecoder(_QueryDecoderBase):
    """DETR-style decoder without masked attention (MaskFormer's; paper Table V, "MFDec").

    ``num_encoder_layers`` (MODEL.MASK_FORMER.ENC_LAYERS, 0 in the released configs) DETR
    encoder layers refine the feature map; then zero-initialised targets with learnable query
    positions go through ``num_layers`` (= DEC_LAYERS) decoder layers, each giving a
    prediction. Modules sit where the original checkpoints have them:
    ``transformer.encoder.layers``, ``transformer.decoder.layers`` and the final LayerNorm
    ``transformer.decoder.norm`` (applied to every layer's output before the heads).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, num_layers: int = 6, pre_norm: bool = False,
                 mask_dim: int = 256, enforce_input_project: bool = False, dropout: float = 0.1,
                 num_encoder_layers: int = 0):
        super().__init__(in_channels, num_classes, hidden_dim, mask_dim, enforce_input_project)
        if pre_norm:
            raise ValueError("HCStandardTransformerDecoder is post-norm only: set MODEL.MASK_FORMER.PRE_NORM False")
        self.transformer = nn.Module()
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layers = nn.ModuleList(
            EncoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(num_encoder_layers))
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(num_layers))
        self.transformer.decoder.norm = nn.LayerNorm(hidden_dim)
        xavier_init_(self.transformer)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

    @property
    def output_norm(self) -> nn.LayerNorm:
        return self.transformer.decoder.norm

    def forward(self, x: Tensor) -> Dict[str, object]:
        B = x.shape[0]
        mask_features = self.mask_proj(x)
        memory = self.input_proj(x)
        pos = self.pe_layer(memory).flatten(2).permute(2, 0, 1)
        memory = memory.flatten(2).permute(2, 0, 1)
        for layer in self.transformer.encoder.layers:
            memory = layer(memory, pos)
        query_pos = self.query_embed.weight[:, None].expand(-1, B, -1)
        tgt = torch.zeros_like(query_pos)
        predictions = []
        for layer in self.transformer.decoder.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            predictions.append(self.predict(tgt, mask_features))
        return self.pack(predictions)


def build_transformer_decoder(cfg, in_channels: int) -> nn.Module:
    """The decoder named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
    mf = cfg.MODEL.MASK_FORMER
    cls = TRANSFORMER_DECODER_REGISTRY.get(mf.TRANSFORMER_DECODER_NAME)  # validate_config lists the known ones
    masked = issubclass(cls, HCTransformerDecoder)  # subclasses too (CAST's decoder)
    extra = {} if masked else {"num_encoder_layers": mf.ENC_LAYERS}
    return cls(
        in_channels=in_channels,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        hidden_dim=mf.HIDDEN_DIM,
        num_queries=mf.NUM_OBJECT_QUERIES,
        nheads=mf.NHEADS,
        dim_feedforward=mf.DIM_FEEDFORWARD,
        # the masked decoder's first prediction comes from the queries themselves
        num_layers=mf.DEC_LAYERS - 1 if masked else mf.DEC_LAYERS,
        pre_norm=mf.PRE_NORM,
        mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        enforce_input_project=mf.ENFORCE_INPUT_PROJ,
        dropout=mf.DROPOUT,
        **extra,
    )

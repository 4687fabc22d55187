"""HCFormer+'s six-layer transformer encoder on the coarsest backbone feature."""
from typing import Optional

from torch import Tensor, nn

from hcformer.layers.position_encoding import PositionEmbeddingSine
from hcformer.layers.transformer_layers import EncoderLayer, xavier_init_


class Res5TransformerEncoder(nn.Module):
    """(B, C_in, h, w) → (B, d_model, h, w): 1×1 conv + GroupNorm, then DETR encoder layers."""

    def __init__(self, in_channels: int, d_model: int = 256, nhead: int = 8, num_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.out_channels = d_model
        self.input_proj = nn.Sequential(nn.Conv2d(in_channels, d_model, 1), nn.GroupNorm(32, d_model))
        self.pe_layer = PositionEmbeddingSine(d_model // 2)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        xavier_init_(self.encoder)
        nn.init.xavier_uniform_(self.input_proj[0].weight, gain=1)
        nn.init.zeros_(self.input_proj[0].bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_proj(x)
        B, C, h, w = x.shape
        pos = self.pe_layer(x).flatten(2).permute(2, 0, 1)  # (hw, B, C)
        seq = x.flatten(2).permute(2, 0, 1)
        for layer in self.encoder.layers:
            seq = layer(seq, pos)
        return seq.permute(1, 2, 0).reshape(B, C, h, w)


def build_res5_aux(cfg, in_channels: int) -> Optional[nn.Module]:
    """The module named by MODEL.RESNETS.AUX ("none" | "transformer"), or None."""
    aux = cfg.MODEL.RESNETS.AUX
    if aux == "none":
        return None
    if aux == "transformer":
        mf = cfg.MODEL.MASK_FORMER
        return Res5TransformerEncoder(
            in_channels,
            d_model=mf.HIDDEN_DIM,
            nhead=mf.NHEADS,
            num_layers=cfg.MODEL.HC.AUX_ENCODER_LAYERS,
            dim_feedforward=mf.DIM_FEEDFORWARD,
        )
    raise ValueError(f'MODEL.RESNETS.AUX must be "none" or "transformer", got {aux!r}')

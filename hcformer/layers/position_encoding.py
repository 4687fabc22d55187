"""2-D sine positional encoding (DETR), normalised to the feature map.

Position i of n along an axis (1-based) is mapped to θ_i = i / (n + ε) · 2π and encoded as

    PE(θ)_{2k} = sin(θ / T^{2k/d}),   PE(θ)_{2k+1} = cos(θ / T^{2k/d}),   k = 0 … d/2 − 1

with d = num_pos_feats, T = temperature. The output stacks the d codes of y, then the d codes
of x. This is DETR's normalisation, which the original HCFormer uses in all three places
(masked decoder, MaskFormer decoder, HCFormer+ encoder); Mask2Former centres the positions,
(i − 0.5) / n, and checkpoints trained with one give different outputs with the other.
"""
import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """(B, C, H, W) → (B, 2·num_pos_feats, H, W) sine/cosine codes of y and x."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        y = torch.arange(1, H + 1, dtype=torch.float32, device=x.device)[:, None].expand(H, W)
        xs = torch.arange(1, W + 1, dtype=torch.float32, device=x.device)[None, :].expand(H, W)
        eps = 1e-6
        y = y / (H + eps) * self.scale
        xs = xs / (W + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = xs[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        # interleave sin (even channels) and cos (odd channels)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
        pos = torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)
        return pos[None].expand(B, -1, -1, -1).to(x.dtype)

"""2-D sine positional encoding (DETR), normalised to the feature map."""
import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """(B, C, H, W) → (B, 2·num_pos_feats, H, W) sine/cosine codes of y and x."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        y = torch.arange(1, H + 1, dtype=torch.float32, device=x.device)[:, None].expand(H, W)
        xs = torch.arange(1, W + 1, dtype=torch.float32, device=x.device)[None, :].expand(H, W)
        if self.normalize:
            # pixel centres in (0, 2π), as Mask2Former (which HCFormer builds on) does
            eps = 1e-6
            y = (y - 0.5) / (H + eps) * self.scale
            xs = (xs - 0.5) / (W + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = xs[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        # interleave sin (even channels) and cos (odd channels)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
        pos = torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)
        return pos[None].expand(B, -1, -1, -1).to(x.dtype)

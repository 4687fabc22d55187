"""From an image and its superpixels to CAST's segment tokens.

A convolutional stem (stride 8) gives overlapping patch features; features and position
embeddings are averaged within every superpixel (a batched scatter-mean over the label map
sampled at the stem's grid). Superpixels that cover no cell of that grid give empty tokens,
flagged in a validity mask that every later step honours.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

__all__ = ["ConvStem", "scatter_sum", "scatter_mean", "labels_at_stride", "SegmentEmbedding"]


class ConvStem(nn.Module):
    """3×3 convs with strides 2, 2, 2, 1 (channels C/8, C/4, C/2, C; no bias, BN + ReLU), then a
    1×1 conv to C: (B, 3, H, W) → (B, C, ⌈H/8⌉, ⌈W/8⌉)."""

    def __init__(self, dim: int, in_chans: int = 3):
        super().__init__()
        widths = [dim // 8, dim // 4, dim // 2, dim]
        layers = []
        for i, (stride, out) in enumerate(zip((2, 2, 2, 1), widths)):
            layers += [nn.Conv2d(widths[i - 1] if i else in_chans, out, 3, stride, 1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(dim, dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def labels_at_stride(labels: Tensor, size: Tuple[int, int], stride: int) -> Tensor:
    """(B, H, W) superpixel ids → (B, h, w) ids of the pixel at the centre of every stride cell."""
    H, W = labels.shape[-2:]
    ys = (torch.arange(size[0], device=labels.device) * stride + stride // 2).clamp_max(H - 1)
    xs = (torch.arange(size[1], device=labels.device) * stride + stride // 2).clamp_max(W - 1)
    return labels[:, ys][:, :, xs]


def scatter_sum(values: Tensor, labels: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    """Sum of (B, C, h, w) ``values`` over each id of (B, h, w) ``labels`` in [0, K).

    Returns (sums (B, K, C), counts (B, K)); a segment without cells has sum 0 and count 0.
    Sums are ``scatter_add`` along the pixels of every image (ONNX's ScatterElements with an
    add reduction: ``index_add_`` would export as a plain scatter, where repeated ids overwrite).
    """
    B, C = values.shape[:2]
    ids = labels.flatten(1)  # (B, hw)
    flat = values.flatten(2)  # (B, C, hw)
    sums = flat.new_zeros(B, C, num_segments).scatter_add_(2, ids[:, None].expand(-1, C, -1), flat)
    counts = flat.new_zeros(B, num_segments).scatter_add_(1, ids, flat.new_ones(ids.shape))
    return sums.transpose(1, 2), counts


def scatter_mean(values: Tensor, labels: Tensor, num_segments: int) -> Tuple[Tensor, Tensor]:
    """``scatter_sum`` divided by the counts: (means (B, K, C), counts (B, K)); a segment
    without cells has mean 0."""
    sums, counts = scatter_sum(values, labels, num_segments)
    return sums / counts.clamp_min(1)[..., None], counts


class SegmentEmbedding(nn.Module):
    """Image + superpixels → segment tokens (with position embeddings) and a class token.

    The position embedding is learnt on the stem grid of a ``base_size`` image and resized
    (bicubic) to other sizes; it is averaged within superpixels like the features.
    """

    def __init__(self, dim: int, base_size: int = 224, stride: int = 8):
        super().__init__()
        self.stride = stride
        self.stem = ConvStem(dim)
        side = base_size // stride
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, side, side))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        for p in (self.pos_embed, self.cls_token, self.cls_pos):
            trunc_normal_(p, std=0.02)

    def position_embedding(self, size: Tuple[int, int]) -> Tensor:
        if tuple(self.pos_embed.shape[-2:]) == tuple(size):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=size, mode="bicubic", align_corners=False)

    def forward(self, image: Tensor, labels: Tensor, num_segments: int) -> Tuple[Tensor, Tensor, Tensor]:
        """image (B, 3, H, W), labels (B, H, W) in [0, K) →
        tokens (B, 1 + K, C) (class token first), valid (B, K) bool, cell labels (B, h, w)."""
        feats = self.stem(image)
        size = feats.shape[-2:]
        cell_labels = labels_at_stride(labels, size, self.stride)
        feats = feats + self.position_embedding(size)  # averaging is linear: pool the sum once
        tokens, counts = scatter_mean(feats, cell_labels, num_segments)
        cls = (self.cls_token + self.cls_pos).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1), counts > 0, cell_labels

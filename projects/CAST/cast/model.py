"""CAST: a ViT on superpixel segment tokens with graph pooling between its blocks.

    image ─► superpixels (SLIC / SEEDS) ─┐
      └────► conv stem (stride 8) ───────┴► segment tokens z0 (B, 1 + K, C) + class token
    level 1: blocks ─► GraphPool → n1 tokens (assignment P1: K → n1)
    level 2: blocks ─► GraphPool → n2 tokens (P2: n1 → n2) ...

The assignments and the superpixel map form the segment hierarchy (``CASTHierarchy``).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.profiler import record_function

from .graph_pool import GraphPool, key_padding_bias
from .hierarchy import CASTHierarchy
from .segment_tokens import SegmentEmbedding
from .superpixels import compute_superpixels

__all__ = ["CAST", "CASTOutput", "CASTClassifier", "CAST_VARIANTS", "cast_classifier"]

# dim, heads, blocks per level (a graph pooling after each level), tokens after each pooling
CAST_VARIANTS: Dict[str, Dict] = {
    "small": dict(dim=384, num_heads=12, depths=(3, 3, 3, 2), num_tokens=(64, 32, 16, 8)),
    "base": dict(dim=768, num_heads=12, depths=(3, 3, 3, 2), num_tokens=(64, 32, 16, 8)),
}


@dataclass
class CASTOutput:
    """What a CAST forward pass gives.

    tokens[l] (B, 1 + N_l, C): tokens after level l's blocks, before its pooling (class first);
    pooled (B, 1 + n_L, C): the tokens after the last pooling; hierarchy: the segment hierarchy
    (its ``coarsest_valid`` flags the pooled tokens that stand for pixels).
    """

    tokens: List[Tensor]
    pooled: Tensor
    hierarchy: CASTHierarchy


class CAST(nn.Module):
    """The CAST encoder.

    Args:
        dim: token channels C.
        num_heads: attention heads.
        depths: blocks of every level; a graph pooling follows each level.
        num_tokens: tokens kept by every graph pooling (clamped to the tokens available).
        kappa: scale of the cosine similarities of the assignment.
        num_superpixels: superpixels per image (``superpixel_size`` overrides it when > 0:
            one superpixel per superpixel_size² pixels, for inputs of any size).
        superpixel_method: "SLIC" or "SEEDS".
        decode_stride: 8 to decode masks to the stem's cells (through the superpixel id of each
            cell's centre), 1 to decode them to pixels through the full superpixel map (masks
            with the superpixels' boundaries; (B, Q, H, W) decoded maps).
        pixel_mean, pixel_std: how the input was normalised (superpixels are computed on the
            RGB image); rgb_input False for BGR inputs.
    """

    def __init__(
        self,
        dim: int = 384,
        num_heads: int = 12,
        depths: Sequence[int] = (3, 3, 3, 2),
        num_tokens: Sequence[int] = (64, 32, 16, 8),
        kappa: float = 5.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        num_superpixels: int = 196,
        superpixel_size: int = 0,
        superpixel_method: str = "SLIC",
        slic_compactness: float = 10.0,
        superpixel_iterations: int = 10,
        pos_base_size: int = 224,
        decode_stride: int = 8,
        pixel_mean: Sequence[float] = (0.485 * 255, 0.456 * 255, 0.406 * 255),
        pixel_std: Sequence[float] = (0.229 * 255, 0.224 * 255, 0.225 * 255),
        rgb_input: bool = True,
    ):
        super().__init__()
        if len(depths) != len(num_tokens):
            raise ValueError(f"one token count per level: depths {list(depths)}, num_tokens {list(num_tokens)}")
        self.dim = dim
        self.num_tokens = list(num_tokens)
        self.num_superpixels = num_superpixels
        self.superpixel_size = superpixel_size
        self.superpixel_method = superpixel_method
        self.slic_compactness = slic_compactness
        self.superpixel_iterations = superpixel_iterations
        self.rgb_input = rgb_input
        if decode_stride not in (1, 8):
            raise ValueError(f"decode_stride must be 8 (stem cells) or 1 (pixels), got {decode_stride}")
        self.decode_stride = decode_stride
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)

        self.embed = SegmentEmbedding(dim, base_size=pos_base_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.levels.append(nn.ModuleList(
                Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=rates[start + j])
                for j in range(depth)))
        self.pools = nn.ModuleList(GraphPool(dim, num_heads, kappa, mlp_ratio) for _ in depths)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def superpixels(self, images: Tensor) -> Tuple[Tensor, int]:
        """(B, 3, H, W) normalised images → (labels (B, H, W), K)."""
        rgb = images.detach() * self.pixel_std + self.pixel_mean
        if not self.rgb_input:
            rgb = rgb.flip(1)
        H, W = (int(n) for n in images.shape[-2:])
        count = self.num_superpixels
        if self.superpixel_size > 0:
            count = max(1, round(H * W / self.superpixel_size**2))
        with record_function("cast.superpixels"):  # a label for profilers (tools/profile_cast_step.py)
            return compute_superpixels(rgb / 255.0, self.superpixel_method, count,
                                       self.slic_compactness, self.superpixel_iterations)

    def forward(self, images: Tensor, superpixels: Optional[Tuple[Tensor, int]] = None) -> CASTOutput:
        """images (B, 3, H, W) normalised; ``superpixels`` (labels, K) if computed elsewhere."""
        labels, K = self.superpixels(images) if superpixels is None else superpixels
        x, valid, cell_labels = self.embed(images, labels, K)
        assignments, all_tokens = [], []
        for blocks, pool, n in zip(self.levels, self.pools, self.num_tokens):
            bias = key_padding_bias(valid, x.dtype)
            for block in blocks:
                x = block(x, attn_mask=bias)
            all_tokens.append(x)
            x, valid, P = pool(x, valid, min(n, x.shape[1] - 1), bias)
            assignments.append(P)
        if self.decode_stride == 1:  # the pixels are the finest grid
            cell_labels, cell_stride = labels, 1
        else:
            cell_stride = self.embed.stride
        hierarchy = CASTHierarchy(cell_labels, assignments[::-1], pixel_labels=labels,
                                  cell_stride=cell_stride, coarsest_valid=valid)
        return CASTOutput(all_tokens, x, hierarchy)


class CASTClassifier(nn.Module):
    """CAST + LayerNorm on the final class token + a linear head (the size of the paper's
    models with a 1000-class head)."""

    def __init__(self, num_classes: int = 1000, **kwargs):
        super().__init__()
        self.encoder = CAST(**kwargs)
        self.norm = nn.LayerNorm(self.encoder.dim)
        self.head = nn.Linear(self.encoder.dim, num_classes)

    def forward(self, images: Tensor, superpixels: Optional[Tuple[Tensor, int]] = None) -> Tensor:
        return self.head(self.norm(self.encoder(images, superpixels).pooled[:, 0]))


def cast_classifier(variant: str = "small", num_classes: int = 1000, **kwargs) -> CASTClassifier:
    """CAST-S / CAST-B classifier ("small" / "base"); ``kwargs`` override the variant's settings."""
    if variant not in CAST_VARIANTS:
        raise KeyError(f"unknown CAST variant {variant!r}; known: {sorted(CAST_VARIANTS)}")
    return CASTClassifier(num_classes, **{**CAST_VARIANTS[variant], **kwargs})

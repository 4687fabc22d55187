"""External clustering teacher of PaCa^ec (paper §3.2.3, Fig. 4 and Fig. 8).

A light FPN-shaped CNN of ConvMixer layers runs on the stem output *before* the ViT: its
bottom-up pass mirrors the ViT's four stages (same strides and widths), a top-down pass
carries coarse, later-stage context back to the fine levels, and a 1×1 conv per level gives
that stage's cluster logits. The ViT stages use these assignments in all their blocks and
add the teacher's level features to their input ("we also integrate the stage outputs from
the teacher network into the PaCa ViT").

The paper gives the structure, not every layer; the choices here (ConvMixer layers with a
k×k depth-wise conv, 3×3 stride-2 conv + BN between levels, 1×1 lateral convs and bilinear
upsampling top-down) are this project's and are stated so in its README.
"""
from typing import List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn


class ConvMixerLayer(nn.Module):
    """ConvMixer's layer: x + BN(GELU(DWConv_k(x))) mixes space, BN(GELU(1×1(x))) mixes channels."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim), nn.GELU(), nn.BatchNorm2d(dim)
        )
        self.channel = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.channel(x + self.spatial(x))


class ClusteringTeacher(nn.Module):
    """Bottom-up ConvMixer levels + top-down pathway → per-stage features and cluster logits.

    Args:
        dims: channels of the four levels (those of the ViT stages).
        depths: ConvMixer layers per level.
        num_clusters: M of each stage; a stage with 0 gets no head (plain MHSA there).
        kernel_size: of the depth-wise convs.
    """

    def __init__(self, dims: Sequence[int], depths: Sequence[int], num_clusters: Sequence[int], kernel_size: int = 7):
        super().__init__()
        self.num_clusters = list(num_clusters)
        self.downsamples = nn.ModuleList(
            nn.Identity()
            if i == 0
            else nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1), nn.BatchNorm2d(dims[i]))
            for i in range(len(dims))
        )
        self.levels = nn.ModuleList(
            nn.Sequential(*[ConvMixerLayer(dims[i], kernel_size) for _ in range(depths[i])]) for i in range(len(dims))
        )
        # lateral[i] maps level i + 1 down to level i's channels for the top-down sum
        self.lateral = nn.ModuleList(nn.Conv2d(dims[i + 1], dims[i], 1) for i in range(len(dims) - 1))
        self.heads = nn.ModuleList(
            ClusterHead(dims[i], m) if m > 0 else nn.Identity() for i, m in enumerate(num_clusters)
        )

    def forward(self, x: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            x: (B, C_0, H, W) the ViT's stem output.
        Returns:
            features: per level (B, C_i, H_i, W_i), H_i = ceil(H / 2^i), to add to the ViT
                stage inputs; logits: per level (B, M_i, H_i, W_i), or None where M_i = 0.
        """
        bottom_up = []
        for down, level in zip(self.downsamples, self.levels):
            x = level(down(x))
            bottom_up.append(x)
        features = [bottom_up[-1]]
        for i in range(len(bottom_up) - 2, -1, -1):
            coarse = self.lateral[i](features[0])
            up = F.interpolate(coarse, size=bottom_up[i].shape[-2:], mode="bilinear", align_corners=False)
            features.insert(0, bottom_up[i] + up)
        logits = [head(f) if m > 0 else None for head, f, m in zip(self.heads, features, self.num_clusters)]
        return features, logits


class ClusterHead(nn.Module):
    """1×1 conv to the M cluster logits; named as the onsite modules' last layer so that the
    M-change loader treats both alike."""

    def __init__(self, dim: int, num_clusters: int):
        super().__init__()
        self.to_clusters = nn.Conv2d(dim, num_clusters, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_clusters(x)

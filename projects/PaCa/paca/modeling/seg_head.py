"""The PaCa segmentation head (paper §3.4, Fig. 5) for detectron2's ``SemanticSegmentor``.

With as many clusters as classes (M = L), the cluster assignment can be supervised directly:

    res2..res5 ─ 1×1 ConvBlock to D each ─ upsample to stride 4 ─ concat ─ F (B, 4D, H, W)
    F ─ ConvBlock 4D→D ─ 1×1 conv to L ─ cluster logits ─ softmax over HW ─ C   (aux CE on logits)
    F ─ ConvBlock 4D→D ─ Q;   Z = Cᵀ·F (L × 4D) ─ LinearBlock → K, V (L × D)
    softmax_L(Q·Kᵀ)·V ─ ConvBlock D→D ─ dropout ─ 1×1 conv to L ─ class logits

ConvBlock = 1×1 conv + BN + ReLU; LinearBlock = linear + BN1d + ReLU; the attention is
single-head and unscaled, as in the paper.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int, norm: str) -> Conv2d:
    """1×1 conv (no bias: the norm has one) + norm + ReLU."""
    return Conv2d(
        in_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels), activation=F.relu
    )


class LinearBlock(nn.Module):
    """Linear + BatchNorm over the channels of a token set + ReLU, on (B, L, C) tokens."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        # SyncBatchNorm works on (B, C, L) too, and falls back to BatchNorm outside DDP
        self.norm = nn.SyncBatchNorm(out_channels) if norm == "SyncBN" else nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.linear(x).transpose(1, 2)).transpose(1, 2))


@SEM_SEG_HEADS_REGISTRY.register()
class PaCaSegHead(nn.Module):
    """``MODEL.SEM_SEG_HEAD.NAME: "PaCaSegHead"``; ``forward(features, targets)`` returns
    (class logits at the padded input size in eval, None in training; losses in training).

    Losses: "loss_sem_seg" (cross-entropy of the class logits, ``loss_weight``) and
    "loss_cluster" (cross-entropy of the cluster logits read as per-pixel class scores,
    ``aux_loss_weight``); both at the input resolution, ``ignore_value`` ignored.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        channels: int = 256,
        norm: str = "BN",
        dropout: float = 0.1,
        loss_weight: float = 1.0,
        aux_loss_weight: float = 0.4,
        ignore_value: int = 255,
    ):
        super().__init__()
        if norm not in ("BN", "SyncBN"):
            raise ValueError(f'PaCaSegHead: MODEL.SEM_SEG_HEAD.NORM must be "BN" or "SyncBN", got {norm!r}')
        if not input_shape:
            raise ValueError("PaCaSegHead: no input feature (MODEL.SEM_SEG_HEAD.IN_FEATURES vs the backbone's)")
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [name for name, _ in ordered]
        self.common_stride = ordered[0][1].stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight

        self.lateral = nn.ModuleList(conv_block(spec.channels, channels, norm) for _, spec in ordered)
        fused = channels * len(ordered)
        self.cluster_block = conv_block(fused, channels, norm)
        self.to_clusters = Conv2d(channels, num_classes, 1)
        self.query = conv_block(fused, channels, norm)
        self.key = LinearBlock(fused, channels, norm)
        self.value = LinearBlock(fused, channels, norm)
        self.out_block = conv_block(channels, channels, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # small predictors start every class (and cluster) near equal scores
        for predictor in (self.to_clusters, self.classifier):
            nn.init.normal_(predictor.weight, std=0.01)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "channels": head.CONVS_DIM,
            "norm": head.NORM,
            "dropout": cfg.MODEL.PACA.HEAD.DROPOUT,
            "loss_weight": head.LOSS_WEIGHT,
            "aux_loss_weight": cfg.MODEL.PACA.HEAD.AUX_LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
        }

    def layers(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """Backbone features → (class logits, cluster logits), both (B, L, H/4, W/4)."""
        size = features[self.in_features[0]].shape[-2:]
        fused = torch.cat(
            [
                F.interpolate(block(features[name]), size=size, mode="bilinear", align_corners=False)
                if i > 0
                else block(features[name])
                for i, (name, block) in enumerate(zip(self.in_features, self.lateral))
            ],
            dim=1,
        )  # (B, 4D, H, W)
        cluster_logits = self.to_clusters(self.cluster_block(fused))  # (B, L, H, W)
        assignment = cluster_logits.flatten(2).float().softmax(dim=-1)  # over HW, eq. (9)
        tokens = fused.flatten(2).transpose(1, 2)  # (B, HW, 4D)
        clusters = assignment.to(tokens.dtype) @ tokens  # (B, L, 4D), eq. (11)
        q = self.query(fused).flatten(2).transpose(1, 2)  # (B, HW, D), eq. (10)
        k, v = self.key(clusters), self.value(clusters)  # (B, L, D), eq. (12)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]
        B, _, H, W = fused.shape
        out = self.out_block(attended.transpose(1, 2).reshape(B, -1, H, W))  # eq. (13)
        return self.classifier(self.dropout(out)), cluster_logits  # eq. (14)

    def forward(self, features: Dict[str, Tensor], targets: Optional[Tensor] = None):
        """
        Args:
            features: backbone outputs, at least ``in_features``.
            targets: (B, H, W) int64 labels at the padded input size (training).
        """
        logits, cluster_logits = self.layers(features)
        if self.training:
            return None, self.losses(logits, cluster_logits, targets)
        logits = F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return logits, {}

    def losses(self, logits: Tensor, cluster_logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        def ce(x: Tensor) -> Tensor:
            x = F.interpolate(x.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
            return F.cross_entropy(x, targets, ignore_index=self.ignore_value)

        return {
            "loss_sem_seg": self.loss_weight * ce(logits),
            "loss_cluster": self.aux_loss_weight * ce(cluster_logits),
        }

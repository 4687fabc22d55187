"""PaCa-ViT (paper Fig. 3 and Fig. 7): a conv stem, four stages of PaCa blocks, conv transitions.

    image ─ stem (3×3 s2, 3×3 s2, LN) ─ stage 1 ─ trans (3×3 s2, LN) ─ stage 2 ─ ... ─ stage 4
                 stride 4                 stride 4                      stride 8        stride 32

``PaCaViT`` is the trunk shared by the ImageNet classifier (``PaCaViTClassifier``) and the
detectron2 backbones (``paca.modeling.backbone``): it returns every stage's input and output,
so that a backbone can norm the outputs and HC-PaCa can cluster across the transitions.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import LayerNorm2d, trunc_normal_
from torch import Tensor, nn

from hcformer.modeling.backbone.pyramid import valid_cells

from .block import PaCaStage
from .clustering import build_clustering
from .teacher import ClusteringTeacher

# The released models (reference facts): heads 2,4,8,16, MLP ratio 4, M = 100,100,100,0.
PACA_VARIANTS: Dict[str, Dict[str, object]] = {
    "tiny": dict(dims=(96, 192, 320, 384), depths=(2, 2, 4, 2), drop_path_rate=0.1),
    "small": dict(dims=(96, 192, 320, 384), depths=(3, 3, 10, 3), drop_path_rate=0.1),
    "base": dict(dims=(96, 192, 384, 512), depths=(3, 3, 18, 3), drop_path_rate=0.5),
}

StageIO = Tuple[Tensor, Tensor]
ClusterLogits = Dict[Tuple[int, int], Tensor]


def init_paca_weights(m: nn.Module) -> None:
    """Linear: trunc-normal(0.02); conv: normal(0, sqrt(2 / fan_out)); norms: 1 / 0; biases 0."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PaCaViT(nn.Module):
    """The PaCa-ViT trunk.

    Args:
        dims, depths, num_heads: channels, blocks and heads of the four stages.
        num_clusters: M of each stage; 0 makes the stage plain MHSA.
        clustering: "conv" (eqs. 4-5) or "mlp" (eq. 6) onsite clustering.
        clustering_scope: "stage" (computed by the first block, shared by the others) or
            "block" (every block clusters its own input).
        teacher_depths: ConvMixer layers per level of the external clustering teacher
            (PaCa^ec); None for onsite clustering. With a teacher, no block clusters.
        teacher_kernel_size: depth-wise kernel of the teacher's ConvMixer layers.
        drop_path_rate: stochastic depth of the last block, linear from 0 over all blocks.
    """

    def __init__(
        self,
        dims: Sequence[int] = (96, 192, 320, 384),
        depths: Sequence[int] = (2, 2, 4, 2),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        num_clusters: Sequence[int] = (100, 100, 100, 0),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        clustering: str = "conv",
        clustering_scope: str = "stage",
        teacher_depths: Optional[Sequence[int]] = None,
        teacher_kernel_size: int = 7,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
    ):
        super().__init__()
        for name, values in (("dims", dims), ("depths", depths), ("num_heads", num_heads), ("num_clusters", num_clusters)):
            if len(values) != 4:
                raise ValueError(f"PaCa-ViT has 4 stages: {name} must have 4 entries, got {list(values)}")
        if any(m < 0 for m in num_clusters):
            raise ValueError(f"numbers of clusters must be >= 0, got {list(num_clusters)}")
        if clustering_scope not in ("stage", "block"):
            raise ValueError(f'MODEL.PACA.CLUSTERING_SCOPE must be "stage" or "block", got {clustering_scope!r}')
        self.dims = list(dims)
        self.num_clusters = list(num_clusters)

        # two stride-2 convs with nothing in between: one overlapping patch embedding of stride 4
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            LayerNorm2d(dims[0], eps=1e-6),
        )
        self.transitions = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1), LayerNorm2d(dims[i], eps=1e-6))
            for i in range(1, 4)
        )
        self.teacher = None
        if teacher_depths is not None:
            self.teacher = ClusteringTeacher(dims, teacher_depths, num_clusters, teacher_kernel_size)

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(4):
            m = num_clusters[i]
            onsite = m > 0 and self.teacher is None
            clusterers = [
                build_clustering(clustering, dims[i], m) if onsite and (b == 0 or clustering_scope == "block") else None
                for b in range(depths[i])
            ]
            first = sum(depths[:i])
            self.stages.append(
                PaCaStage(dims[i], num_heads[i], m, clusterers, rates[first : first + depths[i]], mlp_ratio, qkv_bias)
            )
        self.apply(init_paca_weights)

    def forward_stages(
        self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None, with_cluster_logits: bool = False
    ) -> Union[List[StageIO], Tuple[List[StageIO], ClusterLogits]]:
        """
        Args:
            x: (B, 3, H, W) normalised images (any H, W).
            image_sizes: (h, w) of each image before batch padding; padded cells are left
                out of the clusters (and of the keys of plain MHSA).
            with_cluster_logits: also return the assignment logits of this forward.
        Returns:
            For each stage, (input after its downsampling, output), both (B, C_i, H_i, W_i)
            with H_i = ceil(H / 2^(i+2)): the inputs are the coarse sides of the transitions.
            With ``with_cluster_logits``, also {(stage, block): (B, M, H_i, W_i)} (0-based) for
            every block that computed an assignment (the first block of a stage-wise stage,
            every block of a block-wise one) and {(stage, -1): ...} for the teacher's; plain
            MHSA stages have no entry.
        """
        x = self.stem(x)
        teacher_features, teacher_logits = self.teacher(x) if self.teacher is not None else (None, None)
        results: List[StageIO] = []
        cluster_logits: ClusterLogits = {}
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.transitions[i - 1](x)
            stage_input = x
            outside_logits = None
            if teacher_features is not None:
                x = x + teacher_features[i]
                outside_logits = teacher_logits[i]
                if outside_logits is not None:
                    cluster_logits[i, -1] = outside_logits
            valid = valid_cells(image_sizes, 2 ** (i + 2), x.shape[-2:], x.device)
            x, block_logits = stage(x, valid, outside_logits)
            cluster_logits.update({(i, j): logits for j, logits in enumerate(block_logits) if logits is not None})
            results.append((stage_input, x))
        return (results, cluster_logits) if with_cluster_logits else results

    def forward(self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Tensor]:
        """The four stage outputs (not normed), strides 4, 8, 16, 32."""
        return [out for _, out in self.forward_stages(x, image_sizes)]


class PaCaViTClassifier(PaCaViT):
    """ImageNet classifier: the trunk, a LayerNorm on the last stage, global average pool, linear."""

    def __init__(self, num_classes: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.norm = LayerNorm2d(self.dims[-1], eps=1e-6)
        self.head = nn.Linear(self.dims[-1], num_classes)
        init_paca_weights(self.head)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, num_classes) logits."""
        last = self.forward_stages(x)[-1][1]
        return self.head(self.norm(last).mean(dim=(2, 3)))


def paca_classifier(variant: str, **overrides) -> PaCaViTClassifier:
    """A released-size classifier: ``variant`` in PACA_VARIANTS, any argument overridden."""
    if variant not in PACA_VARIANTS:
        raise ValueError(f"unknown PaCa variant {variant!r}; choose from {sorted(PACA_VARIANTS)}")
    return PaCaViTClassifier(**{**PACA_VARIANTS[variant], **overrides})

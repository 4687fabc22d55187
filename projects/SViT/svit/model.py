"""SViT: a conv stem, four stages of STT blocks with 3×3 stride-2 conv downsampling between them.

As a detectron2 ``Backbone`` it returns the output of every stage (before its downsampling) at
strides 4, 8, 16, 32 as res2..res5, for inputs of any size (a stride-2 conv turns a side of n
into ceil(n / 2)). With ``level`` > 0 it is HC-SViT: an HCFormer ``ClusteringLayer`` pairs the
output of stage k (fine) with the output of the downsampling that follows it (coarse), for the
``level`` coarsest transitions, and ``forward`` also returns their ``LocalGridHierarchy``
under "assign" — what the HCFormer head decodes its masks through.

Module names: ``stem.{0,2,3,5,6,8,9,11}`` (conv, GELU, BN ×4), ``layers.{k}.blocks.{j}.{cpe.conv,
norm1, attn.mhsa.{qkv,proj}, ls1.gamma, norm2, ffn.{fc1, dwconv.conv, fc2}, ls2.gamma}``,
``layers.{k}.downsample.{0,1}`` (conv, norm) for k < 3, ``layers.{k}.clustering``. The
released ImageNet checkpoints map onto them with ``svit.checkpoint.convert_released_state_dict``.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from detectron2.layers import get_norm
from detectron2.modeling import Backbone
from torch import Tensor, nn

from hcformer.layers.clustering import ClusteringLayer
from hcformer.modeling.backbone.clustered_downsampling import ClusteredDownsampling, clustered_transitions
from hcformer.modeling.backbone.pyramid import FEATURE_NAMES, checkpointed, describe_outputs, select_outputs

from .block import SuperTokenBlock

STEM_STRIDE = 4


@dataclass(frozen=True)
class SViTVariant:
    """Architecture of a released SViT (Table 8 of the paper; released as "STViT")."""

    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    layer_scale: Tuple[bool, bool, bool, bool]
    drop_path_rate: float  # of the ImageNet training


SVIT_VARIANTS: Dict[str, SViTVariant] = {
    "small": SViTVariant((64, 128, 320, 512), (3, 5, 9, 3), (1, 2, 5, 8), (False,) * 4, 0.1),
    "base": SViTVariant((96, 192, 384, 512), (4, 6, 14, 6), (2, 3, 6, 8), (False, False, True, True), 0.4),
    "large": SViTVariant((96, 192, 448, 640), (4, 7, 19, 8), (2, 3, 7, 10), (False, False, True, True), 0.6),
}


def conv_stem(out_channels: int, norm: str = "BN") -> nn.Sequential:
    """Four 3×3 convs (strides 2, 1, 2, 1; channels C/2, C/2, C, C), each followed by GELU, then
    the norm: (B, 3, H, W) → (B, C, ceil(H/4), ceil(W/4))."""
    layers: List[nn.Module] = []
    in_ch = 3
    for out_ch, stride in ((out_channels // 2, 2), (out_channels // 2, 1), (out_channels, 2), (out_channels, 1)):
        layers += [nn.Conv2d(in_ch, out_ch, 3, stride, 1), nn.GELU(), get_norm(norm, out_ch)]
        in_ch = out_ch
    return nn.Sequential(*layers)


class SViTStage(nn.Module):
    """STT blocks, then optionally the downsampling (3×3 stride-2 conv + norm).

    Args:
        dim: channels of the stage.
        depth: number of blocks.
        drop_path: stochastic-depth rate of each block.
        out_dim: channels after the downsampling; None for the last stage (no downsampling).
        clustering: the ``ClusteringLayer`` of the transition to the downsampled map, or None;
            held here for the checkpoints' names (``layers.{k}.clustering``), run by ``SViT``.
        use_checkpoint: gradient checkpointing of every block in training.
        block_kwargs: the other ``SuperTokenBlock`` arguments.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        out_dim: Optional[int] = None,
        clustering: Optional[ClusteringLayer] = None,
        norm: str = "BN",
        use_checkpoint: bool = False,
        **block_kwargs,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SuperTokenBlock(dim, drop_path=drop_path[j], norm=norm, **block_kwargs) for j in range(depth)
        )
        self.downsample = None
        if out_dim is not None:
            self.downsample = nn.Sequential(nn.Conv2d(dim, out_dim, 3, 2, 1), get_norm(norm, out_dim))
        if clustering is not None and self.downsample is None:
            raise ValueError("a clustering needs the downsampling of its stage")
        self.clustering = clustering

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: (B, C, H, W).
        Returns:
            out: (B, C, H, W), the blocks' output;
            down: (B, C', ceil(H/2), ceil(W/2)) downsampled ``out`` (None for the last stage).
        """
        for block in self.blocks:
            x = checkpointed(self.use_checkpoint and self.training, block, x)
        return x, None if self.downsample is None else self.downsample(x)


class SViT(Backbone):
    """The SViT trunk as a detectron2 backbone; HC-SViT with ``level`` > 0.

    ``forward(x, image_sizes=None)`` returns {"res2": .., "res5": ..} (NCHW, strides 4..32) and,
    with ``return_hierarchy``, "assign": a ``LocalGridHierarchy`` of the clusterings, coarse →
    fine. With ``aux`` (HCFormer+'s encoder) res5 is that module's output.

    Args:
        embed_dims, depths, num_heads: channels, blocks and attention heads of the four stages.
        stoken_sizes: super-token grid of each stage (1 = global attention).
        n_iter: association rounds of the super-token sampling.
        mlp_ratio, qkv_bias: of the blocks.
        drop_rate, attn_drop_rate: dropout after projections / of the attention weights.
        drop_path_rate: stochastic depth, from 0 (first block) to this (last), linearly.
        layer_scale, layer_scale_init: per-stage layer scale of the blocks and its initial value.
        norm: normalisation of the stem, the downsampling and the ConvFFNs ("BN" as released;
            "SyncBN", "FrozenBN" for fine-tuning).
        level: number of clustering layers, at the coarsest transitions (0-3).
        emb_dim, init_scale: ``ClusteringLayer`` embedding channels and initial scale s.
        return_hierarchy: return "assign" (for the HCFormer head).
        out_features: which of res2..res5 to return.
        use_checkpoint: gradient checkpointing of every block in training.
        aux: a module applied to res5, with an ``out_channels`` attribute.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 5, 9, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        stoken_sizes: Sequence[Union[int, Sequence[int]]] = (8, 4, 1, 1),
        n_iter: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        layer_scale: Sequence[bool] = (False, False, False, False),
        layer_scale_init: float = 1e-6,
        norm: str = "BN",
        level: int = 0,
        emb_dim: int = 128,
        init_scale: float = 0.1,
        return_hierarchy: bool = False,
        out_features: Sequence[str] = FEATURE_NAMES,
        use_checkpoint: bool = False,
        aux: Optional[nn.Module] = None,
    ):
        super().__init__()
        for name, values in (("EMBED_DIMS", embed_dims), ("DEPTHS", depths), ("NUM_HEADS", num_heads),
                             ("STOKEN_SIZES", stoken_sizes), ("LAYER_SCALE", layer_scale)):
            if len(values) != 4:
                raise ValueError(f"SViT has 4 stages: MODEL.SVIT.{name} has {len(values)} values")
        transitions = clustered_transitions(level)
        self.return_hierarchy = return_hierarchy

        self.stem = conv_stem(embed_dims[0], norm)
        self.pos_drop = nn.Dropout(drop_rate)
        num_blocks = sum(depths)
        rates = [drop_path_rate * j / max(num_blocks - 1, 1) for j in range(num_blocks)]
        self.layers = nn.ModuleList()
        for k in range(4):
            clustering = None
            if k in transitions:
                clustering = ClusteringLayer(embed_dims[k], embed_dims[k + 1], emb_dim, init_scale)
            self.layers.append(
                SViTStage(
                    embed_dims[k],
                    depths[k],
                    drop_path=rates[sum(depths[:k]) : sum(depths[: k + 1])],
                    out_dim=embed_dims[k + 1] if k < 3 else None,  # the last stage keeps its size
                    clustering=clustering,
                    norm=norm,
                    use_checkpoint=use_checkpoint,
                    num_heads=num_heads[k],
                    grid=stoken_sizes[k],
                    n_iter=n_iter,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    layer_scale=layer_scale[k],
                    layer_scale_init=layer_scale_init,
                )
            )

        self.aux = aux
        res5_channels = aux.out_channels if aux is not None else embed_dims[3]
        describe_outputs(self, out_features, list(embed_dims[:3]) + [res5_channels], first_stride=STEM_STRIDE)

    @property
    def clustering_layers(self) -> List[ClusteringLayer]:
        """The clustering layers, coarsest first (as ``HCResNet.clustering_layers``)."""
        return [self.layers[k].clustering for k in (2, 1, 0) if self.layers[k].clustering is not None]

    def forward(self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, object]:
        """
        Args:
            x: (B, 3, H, W) normalised images, any H and W.
            image_sizes: (h, w) of each image before the batch padding; downsampled cells that
                lie in the padding are never cluster candidates.
        """
        x = self.pos_drop(self.stem(x))
        feats = {}
        clusterings = ClusteredDownsampling(self.clustering_layers, image_sizes, finest_stride=STEM_STRIDE)
        for k, stage in enumerate(self.layers):
            out, down = stage(x)
            if down is not None:
                clusterings(k, out, down)
            feats[FEATURE_NAMES[k]] = out
            x = down
        hierarchy = clusterings.hierarchy(feats["res5"].shape[-2:]) if self.return_hierarchy else None
        return select_outputs(self, feats, hierarchy)

    @property
    def size_divisibility(self) -> int:
        # Any size works (the STA pads to its grid itself); 32 makes every stride-2 step exact,
        # so that the hierarchy's cells tile the padded image.
        return 32

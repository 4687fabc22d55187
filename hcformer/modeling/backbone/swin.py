"""HC-Swin: a Swin Transformer that clusters pixels at its patch-merging layers.

The clustering of stage k (k = 0, 1, 2) pairs the stage's output (after its blocks, not
normed; C·2^k channels at stride 2^(k+2)) with the output of the patch merging that follows it
(C·2^(k+1) channels at stride 2^(k+3)). ``MODEL.HC.LEVEL`` keeps the L coarsest, i.e. stages
3 - L .. 2. Only the last stage is normed (``norm3``), as in the original HCFormer.

The building blocks are timm's (``WindowAttention``, ``Mlp``, ``PatchMerging``,
``PatchEmbed``, ``window_partition`` / ``window_reverse``); the block is a thin module because
timm's ``SwinTransformerBlock`` follows the classification Swin: it is built for one input
resolution, shrinks windows larger than it and rolls the map *before* padding it to window
multiples. The detection Swin that the released checkpoints were trained with pads the normed
map first and rolls the padded map, with an attention mask for the padded size; the two agree
only on maps whose sides are window multiples, which is rare: a 1024-pixel side gives 256
tokens, a multiple of neither 7 nor 12. Module names follow the original checkpoints:
``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1,attn.{qkv,proj,
relative_position_bias_table,relative_position_index},norm2,mlp.{fc1,fc2}}``,
``layers.{i}.downsample.{norm,reduction}``, ``layers.{i}.clustering``, ``norm3``.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models.swin_transformer import PatchMerging, WindowAttention, window_partition, window_reverse
from torch import Tensor, nn

from hcformer.layers.clustering import ClusteringLayer

from .clustered_downsampling import ClusteredDownsampling, clustered_transitions
from .pyramid import FEATURE_NAMES, check_rgb_input, checkpointed, describe_outputs, select_outputs
from .res5_encoder import build_res5_aux


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """Attention mask of the shifted windows of a (height, width) map, sides window multiples.

    After the cyclic shift by ``shift``, a window on the bottom / right border holds tokens
    from up to four regions of the unshifted map that are not neighbours; tokens of different
    regions must not attend to each other.

    Returns:
        (num_windows, window², window²) float: 0 within a region, -100 across regions.
    """
    region = torch.zeros(1, height, width, 1, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            region[:, rows, cols, :] = 3 * i + j
    region = window_partition(region, (window, window)).reshape(-1, window * window)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)


class SwinBlock(nn.Module):
    """Swin block (W-MSA or SW-MSA, then MLP, both pre-norm residual) on a map of any size.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: side of the square attention windows.
        shift: cyclic shift of the windows (0 for W-MSA, window_size // 2 for SW-MSA).
        mlp_ratio: hidden channels of the MLP / C.
        qkv_bias: learnable bias of the q, k, v projection.
        qk_scale: scale of q·kᵀ, head_dim ** -0.5 if None.
        drop: dropout after the attention and in the MLP.
        attn_drop: dropout of the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size), got {shift} for window {window_size}")
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        # timm keeps the index out of the state dict; the original checkpoints have it.
        self.attn.register_buffer("relative_position_index", self.attn.relative_position_index, persistent=True)
        if qk_scale is not None:
            self.attn.scale = qk_scale
            self.attn.fused_attn = False  # PyTorch's fused attention always scales by head_dim ** -0.5
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (B, H, W, C).
            attn_mask: ``shifted_window_mask`` of the padded map (shifted blocks only).
        Returns:
            (B, H, W, C).
        """
        return self.forward_windows(x, self.window_size, self.shift, self.attn, attn_mask)

    def forward_windows(
        self,
        x: Tensor,
        window: int,
        shift: int,
        attention: Callable[[Tensor, Optional[Tensor]], Tensor],
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """The block with windows of any size and any attention on them (Expedit runs the
        block's modules on clustered maps with smaller windows and a resized bias table).

        Args:
            x: (B, H, W, C).
            window, shift: side and cyclic shift of the windows (shift 0: not shifted).
            attention: (windows (num_windows·B, window², C), mask or None) → same shape as windows.
            attn_mask: ``shifted_window_mask`` of the padded map; used only when shifted.
        Returns:
            (B, H, W, C).
        """
        B, H, W, C = x.shape
        y = self.norm1(x)
        # pad the normed map to window multiples (the padding is zeros), then shift
        y = F.pad(y, (0, 0, 0, -W % window, 0, -H % window))
        Hp, Wp = y.shape[1:3]
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, (window, window)).reshape(-1, window * window, C)
        windows = attention(windows, attn_mask if shift else None)
        y = window_reverse(windows.reshape(-1, window, window, C), (window, window), Hp, Wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :H, :W, :])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """Swin blocks (alternately shifted), then optionally patch merging.

    Args:
        dim: channels C of the stage.
        depth: number of blocks.
        downsample: end with a patch merging (C → 2C, stride × 2).
        clustering: the ``ClusteringLayer`` of the transition to the merged map, or None;
            held here for the checkpoints' names (``layers.{i}.clustering``), run by ``HCSwin``.
        use_checkpoint: gradient checkpointing of every block in training.
        block_kwargs: ``SwinBlock`` arguments; ``drop_path`` may be a list, one per block.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        clustering: Optional[ClusteringLayer] = None,
        use_checkpoint: bool = False,
        **block_kwargs,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim, num_heads, window_size, shift=self.shift if i % 2 else 0, drop_path=drop_path[i], **block_kwargs
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        if clustering is not None and not downsample:
            raise ValueError("a clustering needs the patch merging of its stage")
        self.clustering = clustering

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: (B, H, W, C).
        Returns:
            out: (B, H, W, C), the blocks' output;
            down: (B, ceil(H/2), ceil(W/2), 2C), the merged map (None without patch merging).
        """
        ws = self.window_size
        Hp, Wp = x.shape[1] + (-x.shape[1] % ws), x.shape[2] + (-x.shape[2] % ws)
        mask = None
        if self.shift and len(self.blocks) > 1:  # blocks 1, 3, ... are shifted
            mask = shifted_window_mask(Hp, Wp, ws, self.shift, x.device).to(x.dtype)
        for block in self.blocks:
            x = checkpointed(self.use_checkpoint and self.training, block, x, mask)
        return x, None if self.downsample is None else self.downsample(x)


def _init_swin_weights(m: nn.Module) -> None:
    """Swin's initialisation: truncated-normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class HCSwin(Backbone):
    """Swin Transformer with HCFormer clustering at its L coarsest patch mergings.

    ``forward(x, image_sizes=None)`` returns ``{"res2": .., "res5": .., "assign": hierarchy}``
    (NCHW features at strides 4..32, a ``LocalGridHierarchy`` coarse → fine). Only res5 is
    normed; with ``aux`` (HCFormer+'s encoder) res5 is that module's output. Inputs of any
    size work: the image is padded to patch multiples, every block pads its map to window
    multiples and crops it back, patch merging pads odd sides.

    Args:
        embed_dim: channels of stage 0 (stage k has embed_dim · 2^k).
        depths, num_heads: blocks and attention heads of the four stages.
        window_size: side of the attention windows.
        level: number of clustering layers, the coarsest (0-3).
        emb_dim, init_scale: ``ClusteringLayer`` embedding channels and initial scale s.
        pretrain_img_size: image size of the ImageNet pre-training, for the absolute
            position embedding (``ape``) only.
        aux: a module applied to res5 (its ``out_channels`` attribute gives the channels).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        ape: bool = False,
        patch_norm: bool = True,
        pretrain_img_size: int = 224,
        level: int = 3,
        emb_dim: int = 128,
        init_scale: float = 0.1,
        out_features: Sequence[str] = FEATURE_NAMES,
        use_checkpoint: bool = False,
        aux: Optional[nn.Module] = None,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"HC-Swin has 4 stages: got DEPTHS {list(depths)}, NUM_HEADS {list(num_heads)}")
        transitions = clustered_transitions(level)
        self.patch_size = patch_size
        channels = [embed_dim * 2**i for i in range(4)]

        self.patch_embed = PatchEmbed(
            img_size=None,
            patch_size=patch_size,
            in_chans=3,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm if patch_norm else None,
            output_fmt="NHWC",
            strict_img_size=False,
            dynamic_img_pad=True,
        )
        self.absolute_pos_embed = None
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        # stochastic depth: rates from 0 to drop_path_rate, linear in the block index
        num_blocks = sum(depths)
        rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        self.layers = nn.ModuleList()
        for k in range(4):
            self.layers.append(
                SwinStage(
                    channels[k],
                    depths[k],
                    num_heads[k],
                    window_size,
                    drop_path=rates[sum(depths[:k]) : sum(depths[: k + 1])],
                    downsample=k < 3,
                    clustering=ClusteringLayer(channels[k], channels[k + 1], emb_dim, init_scale)
                    if k in transitions
                    else None,
                    use_checkpoint=use_checkpoint,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                )
            )
        self.norm3 = nn.LayerNorm(channels[3])
        # (the clustering layers' LayerNorms start at unit / zero as well; their embeddings
        # are convolutions and keep their xavier initialisation)
        for module in (self.patch_embed, self.layers, self.norm3):
            module.apply(_init_swin_weights)

        self.aux = aux
        res5_channels = aux.out_channels if aux is not None else channels[3]
        describe_outputs(self, out_features, channels[:3] + [res5_channels], first_stride=patch_size)

    @property
    def clustering_layers(self) -> List[ClusteringLayer]:
        """The clustering layers, coarsest first (as ``HCResNet.clustering_layers``)."""
        return [self.layers[k].clustering for k in (2, 1, 0) if self.layers[k].clustering is not None]

    def forward(self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, object]:
        """
        Args:
            x: (B, 3, H, W) normalised images, any H and W.
            image_sizes: (h, w) of each image before padding; merged cells that lie in the
                padding are never cluster candidates. (The padding this module adds itself,
                to patch, window and merging multiples, never fills a whole merged cell.)
        """
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)
        x = self.pos_drop(x)

        feats = {}
        clusterings = ClusteredDownsampling(self.clustering_layers, image_sizes, finest_stride=self.patch_size)
        for k, stage in enumerate(self.layers):
            out, down = stage(x)
            if down is not None:
                clusterings(k, out.permute(0, 3, 1, 2), down.permute(0, 3, 1, 2))
            if k == 3:
                out = self.norm3(out)
            feats[FEATURE_NAMES[k]] = out.permute(0, 3, 1, 2).contiguous()
            x = down
        return select_outputs(self, feats, clusterings.hierarchy(feats["res5"].shape[-2:]))

    @property
    def size_divisibility(self) -> int:
        return self.patch_size * 8  # the stride of res5


@BACKBONE_REGISTRY.register()
class HCSwinTransformer(HCSwin):
    """``MODEL.BACKBONE.NAME: "HCSwinTransformer"``, configured by MODEL.SWIN.* and MODEL.HC.*.

    ``MODEL.RESNETS.AUX "transformer"`` adds HCFormer+'s encoder on res5, as for the ResNet
    (the original reads the same key). Unlike the original, MODEL.HC.EMB_DIM and
    MODEL.HC.TEMPERATURE are honoured; the original's Swin always used 128 and 0.1, the
    defaults of both keys. MODEL.BACKBONE.FREEZE_AT is not used: all stages train, as in the
    original.
    """

    def __init__(self, cfg, input_shape: ShapeSpec):
        s = cfg.MODEL.SWIN
        check_rgb_input("HCSwinTransformer", input_shape)
        super().__init__(
            embed_dim=s.EMBED_DIM,
            depths=s.DEPTHS,
            num_heads=s.NUM_HEADS,
            window_size=s.WINDOW_SIZE,
            mlp_ratio=s.MLP_RATIO,
            qkv_bias=s.QKV_BIAS,
            qk_scale=s.QK_SCALE,
            drop_rate=s.DROP_RATE,
            attn_drop_rate=s.ATTN_DROP_RATE,
            drop_path_rate=s.DROP_PATH_RATE,
            patch_size=s.PATCH_SIZE,
            ape=s.APE,
            patch_norm=s.PATCH_NORM,
            pretrain_img_size=s.PRETRAIN_IMG_SIZE,
            level=cfg.MODEL.HC.LEVEL,
            emb_dim=cfg.MODEL.HC.EMB_DIM,
            init_scale=cfg.MODEL.HC.TEMPERATURE,
            out_features=s.OUT_FEATURES,
            use_checkpoint=s.USE_CHECKPOINT,
            aux=build_res5_aux(cfg, in_channels=s.EMBED_DIM * 8),
        )

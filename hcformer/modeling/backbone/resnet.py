"""HC-ResNet: a torchvision-layout ResNet that clusters pixels at its downsampling layers.

The clustering of level i pairs the output of stage k (fine) with the output of the first,
strided block of stage k+1 (coarse): (layer3, layer4[0]), (layer2, layer3[0]),
(layer1, layer2[0]), coarsest first; ``MODEL.HC.LEVEL`` keeps the L coarsest. With
``MODEL.RESNETS.DOWNSAMPLING "deform"`` the strided convs of those first blocks (the 3×3
conv and the 1×1 shortcut) are modulated deformable convs, so the downsampling can follow
the clusters. Module names follow torchvision / the original HCFormer checkpoints.
"""
from functools import partial
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn

from hcformer.layers.clustering import ClusteringLayer
from hcformer.layers.deform_conv import ModulatedDeformConv

from .clustered_downsampling import ClusteredDownsampling, clustered_transitions
from .pyramid import check_rgb_input, checkpointed, describe_outputs, select_outputs
from .res5_encoder import build_res5_aux

STAGES = ("stem", "res2", "res3", "res4", "res5")  # the names MODEL.RESNETS.CHECKPOINT_STAGES takes
# depth → (block type, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def conv_norm(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``, with a frozen BN folded into a plain conv's weights.

    FrozenBN is the per-channel affine map y = s·z + t (s = γ / √(σ² + ε), t = β − μ·s), so
    s·(W ∗ x + b) + t = (s·W) ∗ x + (s·b + t): one convolution with scaled weights instead of a
    convolution and a pass over its output. The weights are scaled at every call (O(parameters),
    a few % of the map's size here), so nothing is cached and a loaded W is always the one used.
    Only where W needs no gradient (inference, frozen layers): in training, backward would keep
    every scaled weight (+92 MB for R50) where FrozenBN's product keeps only s. The values equal
    the unfolded ones up to rounding; traced graphs (fvcore's FLOP count) keep both operators.
    """
    if (
        not (isinstance(conv, nn.Conv2d) and type(norm) is FrozenBatchNorm2d)
        or (conv.weight.requires_grad and torch.is_grad_enabled())
        or torch.jit.is_tracing()
    ):
        return norm(conv(x))
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvNormSequential(nn.Sequential):
    """``nn.Sequential`` (same parameter names) that runs each (conv, norm) pair with ``conv_norm``."""

    def forward(self, x: Tensor) -> Tensor:
        modules = list(self)
        i = 0
        while i < len(modules):
            if isinstance(modules[i], nn.Conv2d) and i + 1 < len(modules):
                x = conv_norm(modules[i], modules[i + 1], x)
                i += 2
            else:
                x = modules[i](x)
                i += 1
        return x


def _shortcut(in_ch: int, out_ch: int, stride: int, norm: str) -> Optional[nn.Module]:
    """The projection shortcut (1×1 conv + norm) of a block that changes the map's shape."""
    if stride == 1 and in_ch == out_ch:
        return None
    return ConvNormSequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), get_norm(norm, out_ch))


class BasicBlock(torchvision.models.resnet.BasicBlock):
    """torchvision's block (modules, names, initialisation order), each (conv, norm) run by ``conv_norm``."""

    strided_conv = "conv1"

    def __init__(self, in_ch: int, width: int, stride: int, norm: str):
        super().__init__(in_ch, width, stride, norm_layer=partial(get_norm, norm))
        self.downsample = _shortcut(in_ch, width * self.expansion, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = conv_norm(self.conv2, self.bn2, out)
        out += x if self.downsample is None else self.downsample(x)  # in place: no new (B, C, H, W) map
        return self.relu(out)


class Bottleneck(torchvision.models.resnet.Bottleneck):
    """torchvision's ResNet v1.5 bottleneck (the stride is in the 3×3 conv), as ``BasicBlock``."""

    strided_conv = "conv2"

    def __init__(self, in_ch: int, width: int, stride: int, norm: str):
        super().__init__(in_ch, width, stride, norm_layer=partial(get_norm, norm))
        self.downsample = _shortcut(in_ch, width * self.expansion, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_norm(self.conv2, self.bn2, out))
        out = conv_norm(self.conv3, self.bn3, out)
        out += x if self.downsample is None else self.downsample(x)  # in place: no new (B, C, H, W) map
        return self.relu(out)


def make_deformable(block: nn.Module) -> None:
    """Replace the strided convs of a downsampling block (and its shortcut) with DCNv2."""
    setattr(block, block.strided_conv, ModulatedDeformConv.from_conv(getattr(block, block.strided_conv)))
    if block.downsample is not None:
        block.downsample[0] = ModulatedDeformConv.from_conv(block.downsample[0])


class HCResNet(Backbone):
    """ResNet (torchvision layout) with HCFormer clustering at its L coarsest stage transitions.

    ``forward(x, image_sizes=None)`` returns ``{"res2": .., "res5": .., "assign": hierarchy}``
    where the hierarchy (a ``LocalGridHierarchy``) holds the assignments coarse → fine.
    """

    def __init__(
        self,
        depth: int = 50,
        level: int = 3,
        downsampling: str = "deform",
        norm: str = "FrozenBN",
        emb_dim: int = 128,
        init_scale: float = 0.1,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
        aux: Optional[nn.Module] = None,
        use_checkpoint: bool = False,
        checkpoint_stages: Sequence[str] = (),
    ):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(RESNET_SPECS)}, got {depth}")
        transitions = clustered_transitions(level)
        if downsampling not in ("deform", "conv"):
            raise ValueError(f'MODEL.RESNETS.DOWNSAMPLING must be "deform" or "conv", got {downsampling!r}')
        unknown = [stage for stage in checkpoint_stages if stage not in STAGES]
        if unknown:
            raise ValueError(
                f"MODEL.RESNETS.CHECKPOINT_STAGES: unknown stage(s) {unknown}, expected names from {STAGES}"
            )
        if (use_checkpoint or checkpoint_stages) and norm in ("BN", "SyncBN", "naiveSyncBN"):
            # the recomputation in backward would update the running statistics a second time
            keys = {"MODEL.RESNETS.USE_CHECKPOINT": "False"} if use_checkpoint else {}
            keys.update({"MODEL.RESNETS.CHECKPOINT_STAGES": "[]"} if checkpoint_stages else {})
            raise ValueError(
                f"Recomputing activations in backward ({', '.join(keys)}) needs a norm without running "
                f'statistics updated in training (e.g. "FrozenBN", "GN"), got MODEL.RESNETS.NORM {norm!r}; '
                "with it, set " + " and ".join(f"{key} {off}" for key, off in keys.items())
            )
        self.use_checkpoint = use_checkpoint  # every block on its own; ``_run`` then ignores the stages
        self.checkpoint_stages = frozenset(checkpoint_stages)
        self.depth = depth
        block_type, blocks = RESNET_SPECS[depth]
        block_cls = Bottleneck if block_type == "bottleneck" else BasicBlock

        self.stem = ConvNormSequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), get_norm(norm, 64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        in_ch, channels = 64, []
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            layer = []
            for b in range(n):
                layer.append(block_cls(in_ch, width, stride if b == 0 else 1, norm))
                in_ch = width * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            channels.append(in_ch)

        # transition k: the output of layer{k+1} → the first, strided block of layer{k+2}
        self.clustering_layers = nn.ModuleList(  # coarsest first
            ClusteringLayer(channels[k], channels[k + 1], emb_dim, init_scale) for k in reversed(transitions)
        )
        if downsampling == "deform":
            for k in reversed(transitions):
                make_deformable(getattr(self, f"layer{k + 2}")[0])

        self.aux = aux
        res5_channels = aux.out_channels if aux is not None else channels[3]
        describe_outputs(self, out_features, channels[:3] + [res5_channels])
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages, with their BN."""
        modules = [self.stem] + [getattr(self, f"layer{i}") for i in range(1, 5)]
        for m in modules[:freeze_at]:
            for p in m.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(m)

    def store_conv_weights_channels_last(self) -> None:
        """Keep the conv weights in channels-last memory (values unchanged).

        On CPU the maps run channels-last (see ``forward``), and oneDNN wants the weights in
        the maps' layout: a contiguous weight is reordered (copied) at every call, and in
        backward its gradient, computed channels-last, is copied back to the parameter's layout.
        Stored channels-last, neither copy happens (−5 % of a ResNet-18 training step). The
        DCNs' weights (their ``deform`` conv) too: the "bag" backend reads the weight as an
        (O, kh·kw·C) matrix, a view of a channels-last weight and a copy of a contiguous one.
        """
        for module in self.modules():
            if type(module) is nn.Conv2d:  # the plain convs, the DCNs' and the clustering layers'
                module.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, object]:
        """
        Args:
            x: (B, 3, H, W) normalised images, H and W multiples of 32.
            image_sizes: (h, w) of each image before padding; padding cells are never
                cluster candidates.
        """
        feats = {}
        if x.device.type == "cpu":
            # oneDNN's convolutions on CPU work in channels-last (NHWC): given NCHW maps, every
            # conv reorders its input and output (a copy each); given NHWC, the layout carries
            # through the convs, norms and DCNv2 (whose output follows its input's layout),
            # and the stage outputs are NHWC views. ~10 % of the backbone's time at 800×1216.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self._run("stem", [self.stem], x)
        x = self._run("res2", self.layer1, x)
        feats["res2"] = x
        clusterings = ClusteredDownsampling(self.clustering_layers, image_sizes)
        for k in range(3):
            stage, layer = f"res{k + 3}", getattr(self, f"layer{k + 2}")
            fine = x
            x = self._run(stage, layer[:1], fine)  # its output is the clustering's coarse side
            clusterings(k, fine, x)
            x = self._run(stage, layer[1:], x)
            feats[stage] = x
        return select_outputs(self, feats, clusterings.hierarchy(x.shape[-2:]))

    def _run(self, stage: str, modules: Sequence[nn.Module], x: Tensor) -> Tensor:
        """Apply ``modules`` (the stem, or consecutive blocks of ``stage``) to ``x`` in order.

        In training their activations can be recomputed in backward instead of kept: one module
        at a time with ``use_checkpoint`` (every module's input stays in memory), or as one
        segment when ``stage`` is in ``checkpoint_stages`` (only ``x`` and the result stay).
        """

        def run_all(y: Tensor) -> Tensor:
            for module in modules:
                y = module(y)
            return y

        if self.use_checkpoint:
            for module in modules:
                x = checkpointed(self.training, module, x)
            return x
        return checkpointed(self.training and stage in self.checkpoint_stages, run_all, x)

    @property
    def size_divisibility(self) -> int:
        return 32


@BACKBONE_REGISTRY.register()
class D2HCResNet(HCResNet):
    """``MODEL.BACKBONE.NAME: "D2HCResNet"``, configured by MODEL.RESNETS.* and MODEL.HC.*."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        r = cfg.MODEL.RESNETS
        check_rgb_input("D2HCResNet", input_shape)
        aux = build_res5_aux(cfg, in_channels=2048 if r.DEPTH >= 50 else 512)
        super().__init__(
            depth=r.DEPTH,
            level=cfg.MODEL.HC.LEVEL,
            downsampling=r.DOWNSAMPLING,
            norm=r.NORM,
            emb_dim=cfg.MODEL.HC.EMB_DIM,
            init_scale=cfg.MODEL.HC.TEMPERATURE,
            out_features=r.OUT_FEATURES,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            aux=aux,
            use_checkpoint=r.USE_CHECKPOINT,
            checkpoint_stages=r.CHECKPOINT_STAGES,
        )
        if r.WEIGHTS:
            load_imagenet_weights(self, r.WEIGHTS, allow_pickle=cfg.MODEL.ALLOW_PICKLE)
        if cfg.MODEL.DEVICE == "cpu":  # the layout the maps run in there; on CUDA, cuDNN chooses
            self.store_conv_weights_channels_last()


def load_imagenet_weights(backbone: HCResNet, path: str, allow_pickle: bool = False) -> None:
    """Load a local ImageNet ResNet (torchvision ``.pth`` / detectron2 ``.pkl``) into ``backbone``.

    A ``.pkl`` is unpickled only with ``allow_pickle`` (MODEL.ALLOW_PICKLE) or
    HCFORMER_ALLOW_PICKLE=1; see ``hcformer.checkpoint.safe_loading``.
    """
    import logging

    from hcformer.checkpoint.resnet_weights import adapt_to_deformable, convert_resnet_state_dict
    from hcformer.checkpoint.safe_loading import load_checkpoint_file

    state = load_checkpoint_file(path, allow_pickle=allow_pickle)
    if not isinstance(state, dict):
        raise ValueError(f"MODEL.RESNETS.WEIGHTS {path} holds a {type(state).__name__}, not a state dict")
    state = state.get("model", state)
    expected = backbone.state_dict()
    state = adapt_to_deformable(convert_resnet_state_dict(state, prefix=""), expected.keys())
    # the file may lack the clustering layers and the deformable offsets, but tensors the
    # backbone does not have mean another ResNet (e.g. a ResNet-101 file for a ResNet-50)
    unknown = sorted(key for key in state if key not in expected)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise ValueError(
            f"MODEL.RESNETS.WEIGHTS {path} does not fit this ResNet (MODEL.RESNETS.DEPTH "
            f"{backbone.depth}): {len(unknown)} of its tensors are unknown to it: {shown}"
        )
    result = backbone.load_state_dict(state, strict=False)
    logging.getLogger(__name__).info(
        f"MODEL.RESNETS.WEIGHTS {path}: {len(state) - len(result.unexpected_keys)} tensors loaded; "
        f"not in the file (initialised): {len(result.missing_keys)}; unexpected: {result.unexpected_keys}"
    )

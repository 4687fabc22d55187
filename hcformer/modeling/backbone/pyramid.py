"""What the HCFormer backbones share: res2..res5 at strides 4·2^k, and how they are made.

detectron2's ``Backbone.output_shape`` reads ``_out_features``, ``_out_feature_channels`` and
``_out_feature_strides``; ``describe_outputs`` sets them, so backbones need no
``output_shape`` of their own, and ``select_outputs`` makes the forward result. ``valid_cells``
says which cells of a feature map cover an image rather than the padding of the batch;
``checkpointed`` runs a block with gradient checkpointing.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import Tensor

from hcformer.modeling.hierarchy import Hierarchy

__all__ = ["FEATURE_NAMES", "describe_outputs", "select_outputs", "checkpointed", "check_rgb_input", "valid_cells"]

FEATURE_NAMES = ("res2", "res3", "res4", "res5")


def describe_outputs(backbone: Backbone, out_features: Sequence[str], channels: Sequence[int],
                     first_stride: int = 4) -> None:
    """Declare ``out_features`` (a subset of res2..res5, in the given order) of ``backbone``,
    whose res2..res5 have ``channels`` (4 values) at strides ``first_stride``·(1, 2, 4, 8)."""
    unknown = set(out_features) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"{type(backbone).__name__} OUT_FEATURES: unknown {sorted(unknown)}; choose from {FEATURE_NAMES}")
    backbone._out_features = list(out_features)
    backbone._out_feature_channels = {k: int(channels[FEATURE_NAMES.index(k)]) for k in out_features}
    backbone._out_feature_strides = {k: first_stride * 2 ** FEATURE_NAMES.index(k) for k in out_features}


def select_outputs(backbone: Backbone, feats: Dict[str, Tensor], hierarchy: Optional[Hierarchy]) -> Dict[str, object]:
    """The forward result of ``backbone`` from its res2..res5 ``feats``: res5 through its ``aux``
    (HCFormer+'s encoder, which keeps the grid) if any, the ``_out_features``, and "assign":
    ``hierarchy`` unless None."""
    if backbone.aux is not None:
        feats["res5"] = backbone.aux(feats["res5"])
    outputs: Dict[str, object] = {k: v for k, v in feats.items() if k in backbone._out_features}
    if hierarchy is not None:
        outputs["assign"] = hierarchy
    return outputs


def checkpointed(enabled: bool, fn: Callable[..., Tensor], *args) -> Tensor:
    """``fn(*args)``; with ``enabled`` and autograd recording, its activations are recomputed in
    backward instead of kept (gradient checkpointing of a block)."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def check_rgb_input(name: str, input_shape: ShapeSpec) -> None:
    """The backbones take 3-channel images; say so for any other ``input_shape``."""
    if input_shape.channels != 3:
        raise ValueError(f"{name} expects 3 input channels, got {input_shape.channels}")


def valid_cells(image_sizes: Optional[Sequence[Tuple[int, int]]], stride: int, grid_hw, device) -> Optional[Tensor]:
    """Bool (B, 1, h, w): cells of a stride-``stride`` grid that overlap the image, not padding."""
    if image_sizes is None:
        return None
    h, w = grid_hw
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    masks = [(rows * stride < ih) & (cols * stride < iw) for ih, iw in image_sizes]
    return torch.stack(masks)[:, None]

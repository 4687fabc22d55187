"""What every HCFormer backbone shares about its outputs: res2..res5 at strides 4·2^k.

detectron2's ``Backbone.output_shape`` reads ``_out_features``, ``_out_feature_channels`` and
``_out_feature_strides``; ``describe_outputs`` sets them, so backbones need no
``output_shape`` of their own. ``valid_cells`` says which cells of a feature map cover an
image rather than the padding of the batch.
"""
from typing import Optional, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import Tensor

__all__ = ["FEATURE_NAMES", "describe_outputs", "check_rgb_input", "valid_cells"]

FEATURE_NAMES = ("res2", "res3", "res4", "res5")


def describe_outputs(backbone: Backbone, out_features: Sequence[str], channels: Sequence[int],
                     first_stride: int = 4) -> None:
    """Declare ``out_features`` (a subset of res2..res5, in the given order) of ``backbone``,
    whose res2..res5 have ``channels`` (4 values) at strides ``first_stride``·(1, 2, 4, 8)."""
    backbone._out_features = list(out_features)
    backbone._out_feature_channels = {k: int(channels[FEATURE_NAMES.index(k)]) for k in out_features}
    backbone._out_feature_strides = {k: first_stride * 2 ** FEATURE_NAMES.index(k) for k in out_features}


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

"""DCNv2 in ONNX: torchvision's ``deform_conv2d`` as the standard ``DeformConv`` operator (opset 19).

torch's TorchScript-based ONNX exporter knows no translation for torchvision's operator, so
it is registered here (torch's public ``register_custom_op_symbolic``). ``DeformConv`` takes
the same tensors in the same layout: offsets (B, 2·K, Ho, Wo) as (dy, dx) per tap in
row-major tap order, the modulation mask (B, K, Ho, Wo); onnxruntime implements it on CPU
(tests/test_export.py compares the exported models with the eager one). torch's dynamo-based
exporter translates the operator to the same ``DeformConv`` without this registration.
"""
import torch
from torch.onnx import symbolic_helper

__all__ = ["DEFORM_CONV_OPSET", "register_deform_conv_symbolic"]

DEFORM_CONV_OPSET = 19  # the first opset with DeformConv


# the arguments of torchvision::deform_conv2d, in its schema's order
@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv2d(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   weight_groups, offset_groups, use_mask):
    kernel = symbolic_helper._get_tensor_sizes(weight)[-2:]
    inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv", *inputs,
        dilations_i=[dil_h, dil_w], group_i=weight_groups, kernel_shape_i=kernel,
        offset_group_i=offset_groups, pads_i=[pad_h, pad_w, pad_h, pad_w], strides_i=[stride_h, stride_w],
    )


def register_deform_conv_symbolic() -> None:
    """Let ``torch.onnx.export(..., dynamo=False, opset_version >= 19)`` write DeformConv
    (idempotent: a second registration replaces the first)."""
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv2d, DEFORM_CONV_OPSET)

"""FLOP and activation counting of detectron2 models with fvcore.

fvcore counts one multiply-add as one FLOP and skips operators it has no handle for; the
handles below cover the ones HCFormer-like models spend real compute in: torchvision's
deformable convolution, ``baddbmm`` (``nn.MultiheadAttention`` with an attention mask),
PyTorch's fused attention, average pooling, and the local clustering (affinities and decoding,
autograd functions that tracing sees as single ``prim::PythonOp`` nodes): K = 9 multiply-adds
per fine pixel and channel, (EMB_DIM + queries) x 9 per pixel, about 0.15 G for R50 at 800x1067.
Element-wise ops stay uncounted, as everywhere in fvcore.
"""
from math import prod
from typing import Any, Dict, List, Tuple

import torch
from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
from fvcore.nn.jit_handles import Handle, bmm_flop_jit, elementwise_flop_counter, generic_activation_jit, get_shape
from torch import nn


def deform_conv2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``torchvision::deform_conv2d`` counted as the dense convolution of the same shapes: one
    multiply-add per output element, input channel of its group and kernel tap. The bilinear
    sampling of the deformed taps is not counted, as fvcore does not count memory gathers."""
    weight_shape = get_shape(inputs[1])  # (C_out, C_in / groups, kh, kw)
    return prod(get_shape(outputs[0])) * prod(weight_shape[1:])


def scaled_dot_product_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention(q, k, v, ...)``: the two matrix products
    q·kᵀ (L×E by E×S) and softmax(·)·v (L×S by S×Ev) per batch and head."""
    *batch, length, embed = get_shape(inputs[0])
    source = get_shape(inputs[1])[-2]
    value_embed = get_shape(inputs[2])[-1]
    return prod(batch) * length * source * (embed + value_embed)


# The local clustering: one multiply-add per fine pixel, channel and candidate.
def affinity_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fine (B, C, H, W) · candidates → logits (B, K, H, W)."""
    return prod(get_shape(inputs[0])) * get_shape(outputs[0])[1]


def gather_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """weights (B, K, H, W) · values (B, C, h, w) → (B, C, H, W)."""
    return prod(get_shape(inputs[1])) * get_shape(inputs[0])[1]


def scatter_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """weightsᵀ (B, K, H, W) · fine (B, C, H, W) → (B, C, h, w)."""
    return prod(get_shape(inputs[0])) * get_shape(inputs[1])[1]


EXTRA_FLOP_HANDLES: Dict[str, Handle] = {
    "torchvision::deform_conv2d": deform_conv2d_flop_jit,
    # baddbmm(input, batch1, batch2) as its bmm: the added input is element-wise, which fvcore
    # leaves out everywhere (e.g. the bias of addmm)
    "aten::baddbmm": lambda inputs, outputs: bmm_flop_jit(inputs[1:3], outputs),
    "aten::scaled_dot_product_attention": scaled_dot_product_attention_flop_jit,
    "prim::PythonOp._Affinity": affinity_flop_jit,
    "prim::PythonOp._Gather": gather_flop_jit,
    "prim::PythonOp._Scatter": scatter_flop_jit,
    # average pooling as fvcore counts its adaptive form: one addition per input element (SViT's
    # initial super tokens, a pooling of constant kernel so that it exports)
    "aten::avg_pool2d": elementwise_flop_counter(1, 0),
}

# fvcore counts the outputs of its conv / matmul-like ops as activations; same for ours.
EXTRA_ACTIVATION_HANDLES: Dict[str, Handle] = {
    "torchvision::deform_conv2d": generic_activation_jit("conv"),
    "aten::baddbmm": generic_activation_jit(),
    "aten::scaled_dot_product_attention": generic_activation_jit(),
    "prim::PythonOp._Affinity": generic_activation_jit(),
    "prim::PythonOp._Gather": generic_activation_jit(),
    "prim::PythonOp._Scatter": generic_activation_jit(),
}


def _quiet(analysis):
    # Unsupported ops are reported by the caller (``analysis.unsupported_ops()``); the tracer's
    # warnings about data-dependent post-processing are expected and not actionable.
    return (
        analysis.unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )


def flop_count_analysis(module: nn.Module, inputs: Tuple[Any, ...]) -> FlopCountAnalysis:
    """fvcore's FlopCountAnalysis of ``module(*inputs)`` with the extra op handles."""
    return _quiet(FlopCountAnalysis(module, inputs).set_op_handle(**EXTRA_FLOP_HANDLES))


def activation_count_analysis(
    module: nn.Module, inputs: Tuple[Any, ...]
) -> ActivationCountAnalysis:
    """fvcore's ActivationCountAnalysis of ``module(*inputs)`` with the extra op handles."""
    analysis = ActivationCountAnalysis(module, inputs).set_op_handle(**EXTRA_ACTIVATION_HANDLES)
    return _quiet(analysis)


def flatten_predictions(outputs: Dict[str, Any]) -> Tuple[torch.Tensor, ...]:
    """The tensors of one image's detectron2 predictions ("sem_seg", "panoptic_seg",
    "instances"), in a fixed order."""
    tensors = []
    if "sem_seg" in outputs:
        tensors.append(outputs["sem_seg"])
    if "panoptic_seg" in outputs:
        tensors.append(outputs["panoptic_seg"][0])  # the id map; segments_info is not a tensor
    if "instances" in outputs:
        instances = outputs["instances"]
        for field in ("pred_masks", "scores", "pred_classes"):
            if instances.has(field):
                tensors.append(instances.get(field))
    return tuple(tensors)


class InferenceWrapper(nn.Module):
    """``model`` in eval mode as a function of one image tensor (C, H, W) returning tensors,
    which is what tracing needs. ``height`` / ``width`` are the output size requested from the
    model (the size of the original image)."""

    def __init__(self, model: nn.Module, height: int, width: int):
        super().__init__()
        self.model = model
        self.height = height
        self.width = width

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        (outputs,) = self.model([{"image": image, "height": self.height, "width": self.width}])
        return flatten_predictions(outputs)

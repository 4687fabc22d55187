"""Modulated deformable convolution (DCNv2) with interchangeable backends.

For an output pixel p = (i, j), kernel taps k = (ky, kx) in row-major order (K = kh·kw), the
sampling offsets Δp_k(p) = (offset[2k], offset[2k+1])(p) = (dy, dx) and the modulation
m_k(p) ∈ [0, 1]:

    y(p) = b + Σ_k W_k · m_k(p) · x(p·s − pad + (ky, kx) + Δp_k(p))

where x(q) at a real position q = (qy, qx) is bilinear over its four integer corners,

    x(q) = Σ_{c ∈ {⌊qy⌋, ⌊qy⌋+1} × {⌊qx⌋, ⌊qx⌋+1}} (1 − |qy − cy|)(1 − |qx − cx|) · x[c],

and a corner outside the image contributes zero (per corner: a position half a pixel outside
still sees the border pixels with their weights). This is torchvision's ``deform_conv2d``
(single groups, dilation 1), values and gradients, including its conventions at the kinks:
at an integer position the derivative w.r.t. the offset is the forward difference (the
corner ⌊q⌋ + 1), and a position exactly one pixel outside (q = −1) has value 0 but the
forward difference into the border pixel as its offset gradient.

Backends (``set_backend`` / ``use_backend``; "auto" is the default):

- "torchvision": ``torchvision.ops.deform_conv2d`` (an im2col with scalar bilinear
  sampling, and a scalar col2im in backward). The fastest on CUDA; on CPU its backward is
  slow. Traced graphs (fvcore's FLOP count, TorchScript) see it as one operator.
- "sampled": the definition in plain tensor ops: the four corners of all K taps gathered as
  rows of the channels-last input (``index_select``), their weighted sum, one matrix product
  with the weights. Autograd differentiates it; every op exports to ONNX (Gather, MatMul).
  It holds the 4·K corner rows of every output pixel at once.
- "bag": the same computation, where ``embedding_bag`` sums the four weighted corner rows
  without materialising them, and backward recomputes the (B, L, K·C) columns instead of
  keeping them (as torchvision does). The fastest on CPU (benchmarks/bench_deform_conv.py:
  0.2–0.6× torchvision's forward + backward at the ResNet-50 shapes, one thread).

"auto" is "torchvision" on CUDA and while tracing, "bag" otherwise. The parameters are the
same for all backends (``deform`` and ``offset`` convs, the original's checkpoint layout).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d as _torchvision_deform_conv2d

from .backend_switch import BackendSwitch

BACKENDS = ("auto", "torchvision", "sampled", "bag")
_switch = BackendSwitch("deformable convolution", BACKENDS, default="auto")
# set_backend(name) -> the previous name; ``with use_backend(name):`` for a block
set_backend, use_backend = _switch.set, _switch.use


def resolved_backend(device: torch.device) -> str:
    """The backend the selected one stands for on ``device``."""
    if _switch.selected != "auto":
        return _switch.selected
    if device.type == "cuda" or torch.jit.is_tracing():
        return "torchvision"
    return "bag"


def modulated_deform_conv2d(
    x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int = 1, padding: int = 0
) -> Tensor:
    """DCNv2 (module docstring) with the selected backend.

    Args:
        x: (B, C, H, W) input.
        offset: (B, 2K, Ho, Wo), (dy, dx) per tap, taps in row-major order.
        mask: (B, K, Ho, Wo) modulation (already through its sigmoid).
        weight: (O, C, kh, kw); bias: (O,) or None.
    Returns:
        (B, O, Ho, Wo).
    """
    backend = resolved_backend(x.device)
    if backend == "torchvision":
        return _torchvision_deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
    B, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[-2:]
    index, corner_weight = bilinear_corners(offset, mask, (H, W), (kh, kw), stride, padding)
    if backend == "bag":
        return _BagDeformConv.apply(x, index, corner_weight, weight, bias, (Ho, Wo))
    # "sampled": gather the corner rows, weigh and sum them, then one matrix product
    rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)
    corners = rows.index_select(0, index.reshape(-1)).view(-1, 4, C)  # (B·L·K, 4, C)
    columns = torch.matmul(corner_weight.unsqueeze(1), corners).view(B, Ho * Wo, kh * kw * C)
    out = torch.matmul(_weight_matrix(weight), columns.transpose(1, 2))  # (B, O, L)
    if bias is not None:
        out = out + bias.view(1, O, 1)
    return out.view(B, O, Ho, Wo)


def bilinear_corners(
    offset: Tensor, mask: Tensor, size: Tuple[int, int], kernel: Tuple[int, int], stride: int, padding: int
) -> Tuple[Tensor, Tensor]:
    """The four bilinear corners of every tap: row indices into the channels-last input
    (B·H·W, C) and their weights, modulation included.

    Returns:
        index: int64 (B·Ho·Wo·K, 4), rows ordered (b, i, j, k), corners (⌊y⌋, ⌊x⌋),
            (⌊y⌋, ⌊x⌋+1), (⌊y⌋+1, ⌊x⌋), (⌊y⌋+1, ⌊x⌋+1). Corners outside the image point at
            a valid row (clamped) with weight 0, so that no index is out of range.
        weight: (B·Ho·Wo·K, 4) in the dtype of ``offset``, differentiable w.r.t. the offsets
            (through the fractional parts; the floor is constant) and the modulation.
    """
    B, _, Ho, Wo = offset.shape
    H, W = size
    kh, kw = kernel
    K = kh * kw
    device = offset.device
    # (B, Ho, Wo, K) views: the rows of the column matrix are (pixel, tap) pairs
    dy, dx = offset.reshape(B, K, 2, Ho, Wo).permute(2, 0, 3, 4, 1)
    modulation = mask.permute(0, 2, 3, 1)
    # integer part first (exact in floating point), then the offset: one rounding, as torchvision
    tap_y = torch.arange(kh, device=device).repeat_interleave(kw)
    tap_x = torch.arange(kw, device=device).repeat(kh)
    base_y = (torch.arange(Ho, device=device) * stride - padding).view(Ho, 1, 1) + tap_y
    base_x = (torch.arange(Wo, device=device) * stride - padding).view(1, Wo, 1) + tap_x
    y = base_y.to(offset.dtype) + dy
    x = base_x.to(offset.dtype) + dx
    y0, x0 = y.floor(), x.floor()
    fy, fx = y - y0, x - x0  # the floor has no gradient: d fy / d dy = 1
    image_offset = (torch.arange(B, device=device) * (H * W)).view(B, 1, 1, 1)
    indices, weights = [], []
    for cy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        inside_y = (cy >= 0) & (cy <= H - 1)  # on floats: huge offsets cannot overflow an int
        row = cy.clamp(0, H - 1).long() * W + image_offset
        for cx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            inside = inside_y & (cx >= 0) & (cx <= W - 1)
            indices.append(row + cx.clamp(0, W - 1).long())
            weights.append(wy * wx * modulation * inside)
    return torch.stack(indices, -1).view(-1, 4), torch.stack(weights, -1).view(-1, 4)


def _weight_matrix(weight: Tensor) -> Tensor:
    """(O, C, kh, kw) → (O, K·C), columns ordered (tap, channel) as the sampled rows."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _bag_columns(x: Tensor, index: Tensor, corner_weight: Tensor) -> Tensor:
    """(B·L·K, C): Σ_corners weight · x[corner] with ``embedding_bag`` over channels-last rows."""
    C = x.shape[1]
    rows = x.permute(0, 2, 3, 1).reshape(-1, C)  # a view when x is channels-last
    return F.embedding_bag(index, rows, mode="sum", per_sample_weights=corner_weight)


class _BagDeformConv(torch.autograd.Function):
    """columns = bag(x, corners); out = W · columnsᵀ + b. Backward recomputes the columns
    (one ``embedding_bag``, cheap next to the products) instead of keeping K·C·L floats per
    layer for the whole backward pass; the gradients w.r.t. x and the corner weights are those
    of ``embedding_bag`` (a scatter-add of the rows, and dot products with the corner rows)."""

    @staticmethod
    def forward(ctx, x, index, corner_weight, weight, bias, out_size):
        B = x.shape[0]
        O = weight.shape[0]
        Ho, Wo = out_size
        columns = _bag_columns(x, index, corner_weight).view(B, Ho * Wo, -1)
        if _is_channels_last(x):  # (B, L, O): the output stays channels-last, as a conv's would
            out = torch.matmul(columns, _weight_matrix(weight).t())
            if bias is not None:
                out += bias
            out = out.view(B, Ho, Wo, O).permute(0, 3, 1, 2)
        else:  # (B, O, L), NCHW
            out = torch.matmul(_weight_matrix(weight), columns.transpose(1, 2))
            if bias is not None:
                out += bias.view(1, O, 1)
            out = out.view(B, O, Ho, Wo)
        ctx.save_for_backward(x, index, corner_weight, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, index, corner_weight, weight = ctx.saved_tensors
        need_x, _, need_w, need_weight, need_bias, _ = ctx.needs_input_grad
        B, O = grad_out.shape[:2]
        # (B, O, L) as a view of either layout (a transposed view for channels-last)
        g = grad_out.flatten(2) if not _is_channels_last(grad_out) else grad_out.permute(0, 2, 3, 1).reshape(B, -1, O).transpose(1, 2)
        grad_x = grad_corner = grad_weight = grad_bias = None
        with torch.enable_grad():
            xd = x.detach().requires_grad_(need_x)
            wd = corner_weight.detach().requires_grad_(need_w)
            columns = _bag_columns(xd, index, wd).view(B, g.shape[2], -1)  # (B, L, K·C)
        if need_weight:
            # Σ_b g_b · columns_b, as one product over all (image, pixel) pairs
            grad_matrix = torch.mm(g.transpose(0, 1).reshape(O, -1), columns.detach().reshape(-1, columns.shape[2]))
            kh, kw = weight.shape[2:]
            grad_weight = grad_matrix.view(O, kh, kw, -1).permute(0, 3, 1, 2)
        if need_bias and ctx.has_bias:
            grad_bias = g.sum((0, 2))
        inputs = [t for t, need in ((xd, need_x), (wd, need_w)) if need]
        if inputs:
            grad_columns = torch.matmul(g.transpose(1, 2), _weight_matrix(weight))  # (B, L, K·C)
            grads = torch.autograd.grad(columns, inputs, grad_columns)
            if need_x:
                grad_x = grads[0]
            if need_w:
                grad_corner = grads[-1]
        return grad_x, None, grad_corner, grad_weight, grad_bias, None


class ModulatedDeformConv(nn.Module):
    """DCNv2 replacing a plain strided conv of a downsampling block.

    ``offset`` is a 3×3 conv with the same stride that predicts 3·k² channels, split into
    three equal blocks: blocks 0 and 1 (concatenated, in that order) are the sampling
    offsets, block 2 through a sigmoid is the modulation mask. It is zero-initialised, as in
    the original implementation: a fresh layer samples the plain conv's positions with a
    modulation of sigmoid(0) = 0.5, i.e. computes half the plain conv (+ bias).
    Submodule names match the original implementation's checkpoints, whatever the backend.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.deform = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.offset = nn.Conv2d(in_channels, 3 * kernel_size * kernel_size, 3, stride, 1, bias=True)
        nn.init.zeros_(self.deform.bias)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "ModulatedDeformConv":
        """A deformable conv computing ``conv`` at initialisation (its weights copied)."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        with torch.no_grad():
            layer.deform.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.deform.bias.copy_(conv.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        # Sampling positions are sensitive to rounding: run in fp32 even under autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            o1, o2, mask = self.offset(x).chunk(3, dim=1)
            # torchvision's CPU kernel crashes (segfault) on non-finite offsets, and the other
            # backends would index with them; a diverged model must fail in its loss instead.
            offsets = torch.nan_to_num(torch.cat((o1, o2), dim=1), nan=0.0, posinf=0.0, neginf=0.0)
            return modulated_deform_conv2d(
                x, offsets, mask.sigmoid(), self.deform.weight, self.deform.bias, self.stride, self.padding
            )

"""The DCNv2 backends against torchvision's ``deform_conv2d``: values and gradients (input,
offsets, modulation, weights, bias) at random offsets that reach outside the image, land on
integer positions (the kinks of bilinear sampling) and on exactly −1 (one pixel outside),
stride 1 and 2, odd sizes, batch > 1."""
import pytest
import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from hcformer.layers import deform_conv
from hcformer.layers.deform_conv import ModulatedDeformConv, modulated_deform_conv2d, use_backend

OURS = ["sampled", "bag"]


def _case(stride, kernel, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, C, O, H, W = 2, 5, 4, 9, 7
    pad = kernel // 2
    Ho, Wo = (H + 2 * pad - kernel) // stride + 1, (W + 2 * pad - kernel) // stride + 1
    K = kernel * kernel
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    offset = torch.randn(B, 2 * K, Ho, Wo, generator=g, dtype=dtype) * 3  # many positions outside
    offset[:, :, ::2] = offset[:, :, ::2].round()  # integer positions in every other row
    # taps that land exactly one pixel above / left of the image (q = −1), and on the last row
    base = torch.arange(Ho, dtype=dtype) * stride - pad
    offset[:, 0, :, 0] = -1 - base.view(1, Ho)
    offset[:, 1, 1, :] = -1 - (torch.arange(Wo, dtype=dtype) * stride - pad)
    offset[:, 2 * (K - 1), -1, :] = (H - 1) - (base[-1] + kernel - 1)
    mask = torch.rand(B, K, Ho, Wo, generator=g, dtype=dtype)
    weight = torch.randn(O, C, kernel, kernel, generator=g, dtype=dtype)
    bias = torch.randn(O, generator=g, dtype=dtype)
    return x, offset, mask, weight, bias, pad


def _values_and_grads(fn, tensors):
    tensors = [t.clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    # a non-uniform output gradient, so that every element's gradient path is checked
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * probe).sum(), tensors)
    return out.detach(), grads


@pytest.mark.parametrize("backend", OURS)
@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (2, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_backend_matches_torchvision(backend, stride, kernel, dtype, tol):
    x, offset, mask, weight, bias, pad = _case(stride, kernel, dtype)

    def torchvision_fn(x, offset, mask, weight, bias):
        return torchvision_deform_conv2d(x, offset, weight, bias, stride=stride, padding=pad, mask=mask)

    def ours(x, offset, mask, weight, bias):
        with use_backend(backend):
            return modulated_deform_conv2d(x, offset, mask, weight, bias, stride, pad)

    ref, ref_grads = _values_and_grads(torchvision_fn, (x, offset, mask, weight, bias))
    out, grads = _values_and_grads(ours, (x, offset, mask, weight, bias))
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    for name, g, r in zip(("x", "offset", "mask", "weight", "bias"), grads, ref_grads):
        assert r.abs().max() > 0, name  # the case exercises this gradient
        torch.testing.assert_close(g, r, atol=tol, rtol=tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", OURS)
@pytest.mark.parametrize("frozen_weight", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_backend_in_the_module(backend, frozen_weight, channels_last):
    """The module (offset conv + sigmoid) in training, with frozen or trained conv weights, on an
    NCHW or a channels-last input (whose layout the "bag" output keeps)."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv(6, 5, 3, stride=2, padding=1)
    with torch.no_grad():
        layer.offset.weight.normal_(std=0.3)
        layer.deform.bias.normal_()
    layer.deform.weight.requires_grad_(not frozen_weight)
    x = torch.randn(2, 6, 11, 8)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    results = []
    for name in ("torchvision", backend):
        xi = x.clone().requires_grad_()
        with use_backend(name):
            out = layer(xi)
        out.square().sum().backward()
        grads = [xi.grad, layer.offset.weight.grad.clone(), layer.deform.bias.grad.clone()]
        if not frozen_weight:
            grads.append(layer.deform.weight.grad.clone())
        results.append([out.detach()] + grads)
        layer.zero_grad(set_to_none=True)
    for r, o in zip(*results):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
    if backend == "bag":
        assert results[1][0].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_backend_switch():
    assert deform_conv.resolved_backend(torch.device("cpu")) == "bag"
    with use_backend("sampled"):
        assert deform_conv.resolved_backend(torch.device("cpu")) == "sampled"
        assert deform_conv.resolved_backend(torch.device("cuda")) == "sampled"
    assert deform_conv.resolved_backend(torch.device("cuda")) == "torchvision"
    with pytest.raises(ValueError, match="unknown deformable convolution backend"):
        deform_conv.set_backend("im2col")

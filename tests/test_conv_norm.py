"""The R50 backbone's folding of a frozen BN into the preceding conv (``conv_norm``): the same
values as the two modules one after the other, the same parameter names."""
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from hcformer.modeling.backbone.resnet import HCResNet, conv_norm


def _frozen_bn(channels: int) -> FrozenBatchNorm2d:
    norm = FrozenBatchNorm2d(channels)
    norm.weight.uniform_(0.5, 2.0)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.1, 3.0)
    return norm


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_folded_conv_norm_equals_conv_then_norm(bias, channels_last, grad):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=bias)
    norm = _frozen_bn(5)
    x = torch.randn(2, 6, 9, 7)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    conv.weight.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        expected = norm(conv(x))
        out = conv_norm(conv, norm, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 5, 5, 4)


def test_trainable_norm_is_not_folded():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4).train()
    x = torch.randn(2, 3, 5, 5)
    out = conv_norm(conv, norm, x)
    assert norm.num_batches_tracked.item() == 1  # the BN ran, in training mode
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


def test_backbone_parameter_names_unchanged():
    names = set(HCResNet(depth=50, level=3).state_dict())
    for key in ("stem.0.weight", "stem.1.running_var", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.bias", "layer2.0.downsample.0.deform.weight", "layer2.0.bn2.running_mean"):
        assert key in names, key


@pytest.mark.parametrize("grad", [False, True])
def test_channels_last_weights_give_the_same_values_and_gradients(grad):
    """``store_conv_weights_channels_last`` (what D2HCResNet does on the CPU) changes the memory
    layout of the plain conv weights only: outputs and weight gradients equal those of the
    contiguous weights, and the state dict holds the same values."""
    torch.manual_seed(0)
    reference = HCResNet(depth=18, level=3, norm="BN").eval()
    model = HCResNet(depth=18, level=3, norm="BN").eval()
    model.load_state_dict(reference.state_dict())
    model.store_conv_weights_channels_last()
    assert model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.layer1[0].conv1.weight.is_contiguous()
    # DCNv2's too: "bag" reads it as an (O, kh·kw·C) matrix, a view of the channels-last weight
    assert model.layer2[0].conv1.deform.weight.permute(0, 2, 3, 1).is_contiguous()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)

    x = torch.randn(2, 3, 64, 96)
    with torch.set_grad_enabled(grad):
        outputs = [net(x) for net in (reference, model)]
    for name in ("res2", "res3", "res4", "res5"):
        torch.testing.assert_close(outputs[1][name], outputs[0][name], rtol=1e-5, atol=1e-5)
    if grad:
        for out, net in zip(outputs, (reference, model)):
            out["res5"].square().mean().backward()
        torch.testing.assert_close(model.layer3[1].conv2.weight.grad, reference.layer3[1].conv2.weight.grad,
                                   rtol=1e-4, atol=1e-6)
        assert model.layer3[1].conv2.weight.grad.is_contiguous(memory_format=torch.channels_last)

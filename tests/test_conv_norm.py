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

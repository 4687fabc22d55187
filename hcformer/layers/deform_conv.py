"""Modulated deformable convolution (DCNv2) on torchvision's ``deform_conv2d`` (CPU and CUDA)."""
import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv(nn.Module):
    """DCNv2 replacing a plain strided conv of a downsampling block.

    ``offset`` is a 3×3 conv with the same stride that predicts 3·k² channels, split into
    three equal blocks: blocks 0 and 1 (concatenated, in that order) are the sampling
    offsets, block 2 through a sigmoid is the modulation mask. It is zero-initialised, as in
    the original implementation: a fresh layer samples the plain conv's positions with a
    modulation of sigmoid(0) = 0.5, i.e. computes half the plain conv (+ bias).
    Submodule names match the original implementation's checkpoints.
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
            # torchvision's CPU kernel crashes (segfault) on non-finite offsets; a diverged
            # model must fail in its loss, not take the process down.
            offsets = torch.nan_to_num(torch.cat((o1, o2), dim=1), nan=0.0, posinf=0.0, neginf=0.0)
            return deform_conv2d(
                x,
                offsets,
                self.deform.weight,
                self.deform.bias,
                stride=self.stride,
                padding=self.padding,
                mask=mask.sigmoid(),
            )

"""Values of the building blocks where the original HCFormer fixes them: the sine positional
encoding, the DCNv2 wrapper's offset/mask channel order, the masked-attention rule and the
HCFormer+ encoder. Each against numbers computed here by hand or by torch's own modules."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hcformer.layers.deform_conv import ModulatedDeformConv
from hcformer.layers.position_encoding import PositionEmbeddingSine
from hcformer.layers.transformer_layers import CrossAttentionLayer
from hcformer.modeling.backbone.res5_encoder import Res5TransformerEncoder
from hcformer.modeling.head.hc_transformer_decoder import HCTransformerDecoder


# ---------------------------------------------------------------- positional encoding
def test_sine_encoding_of_a_2x3_grid_by_hand():
    """d = 4 codes per axis, T = 10⁴: frequencies 1, 1, 1/100, 1/100; θ = i / n · 2π (1-based i)."""
    pos = PositionEmbeddingSine(num_pos_feats=4)(torch.zeros(1, 7, 2, 3))
    assert pos.shape == (1, 8, 2, 3)

    def codes(theta):
        return [math.sin(theta), math.cos(theta), math.sin(theta / 100), math.cos(theta / 100)]

    for row in range(2):
        for col in range(3):
            theta_y = (row + 1) / 2 * 2 * math.pi
            theta_x = (col + 1) / 3 * 2 * math.pi
            expected = torch.tensor(codes(theta_y) + codes(theta_x))
            torch.testing.assert_close(pos[0, :, row, col], expected, atol=1e-5, rtol=0)
    # the last row / column sit at 2π (no −0.5 centring): sin 2π = 0, cos 2π = 1
    torch.testing.assert_close(pos[0, :2, 1, 0], torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0, 4:6, 0, 2], torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- DCNv2
def _sample(x: torch.Tensor, y: float, xx: float) -> torch.Tensor:
    """Bilinear sample of (C, H, W) at (y, xx), zero outside (per corner), as DCN samples."""
    C, H, W = x.shape
    y0, x0 = math.floor(y), math.floor(xx)
    out = torch.zeros(C)
    for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xi, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
            if 0 <= yi < H and 0 <= xi < W and wy * wx != 0:
                out += wy * wx * x[:, yi, xi]
    return out


def _dcn_by_hand(x, weight, bias, offsets, modulation, stride, padding):
    """DCNv2 by its definition: out(p) = Σ_k w_k · m_k(p) · x(p0 + p_k + Δp_k(p)) + b,
    with Δp_k = (offsets[2k], offsets[2k+1]) = (dy, dx), k over the taps in row-major order."""
    _, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = offsets.shape[-2:]
    out = torch.zeros(1, O, Ho, Wo)
    for i in range(Ho):
        for j in range(Wo):
            acc = bias.clone()
            for k in range(kh * kw):
                ky, kx = divmod(k, kw)
                dy, dx = offsets[0, 2 * k, i, j].item(), offsets[0, 2 * k + 1, i, j].item()
                value = _sample(x[0], i * stride - padding + ky + dy, j * stride - padding + kx + dx)
                acc = acc + modulation[0, k, i, j] * (weight[:, :, ky, kx] @ value)
            out[0, :, i, j] = acc
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_deformable_conv_offset_and_mask_channel_order(stride: int):
    """The offset conv's 27 channels: [0:18] = (dy, dx) per tap in tap order (the original
    concatenates its first two thirds and feeds them as they are), [18:27] = mask logits."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv(3, 4, 3, stride=stride, padding=1)
    with torch.no_grad():
        layer.deform.weight.normal_()
        layer.deform.bias.normal_()
        layer.offset.weight.normal_(std=0.05)  # offsets that vary over the image
        offset_bias = torch.zeros(27)
        offset_bias[2 * 4] = 1.0  # tap 4 (the centre) moves one row down: channel 8 (first third)
        offset_bias[2 * 4 + 1] = -0.5  # ... and half a column left: channel 9 (second third)
        offset_bias[2 * 7 + 1] = 0.25  # tap 7's dx: channel 15
        offset_bias[18 + 2] = 2.0  # tap 2's modulation logit
        offset_bias[18 + 6] = -3.0  # tap 6's
        layer.offset.bias.copy_(offset_bias)
    x = torch.randn(1, 3, 7, 6)
    raw = F.conv2d(x, layer.offset.weight, layer.offset.bias, stride=stride, padding=1)
    expected = _dcn_by_hand(x, layer.deform.weight, layer.deform.bias, raw[:, :18], raw[:, 18:].sigmoid(), stride, 1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_fresh_deformable_conv_is_half_the_plain_conv():
    conv = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
    layer = ModulatedDeformConv.from_conv(conv)
    x = torch.randn(2, 4, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), 0.5 * conv(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- masked attention
def test_fully_blocked_query_attends_everywhere():
    torch.manual_seed(0)
    decoder = HCTransformerDecoder(in_channels=16, num_classes=3, hidden_dim=16, num_queries=3, nheads=2,
                                   dim_feedforward=32, num_layers=1, mask_dim=16)
    masks = torch.full((2, 3, 2, 2), -5.0)  # logits: sigmoid < 0.5 everywhere = blocked
    masks[0, 0, 0, 1] = 3.0  # image 0, query 0: sees key 1 only
    masks[1, 1] = 3.0  # image 1, query 1: sees everything
    blocked = decoder.attention_mask(masks)
    assert blocked.shape == (2 * 2, 3, 4)  # (B·heads, Q, h·w), batch-major as nn.MultiheadAttention reads it
    for head in range(2):
        assert blocked[0 * 2 + head, 0].tolist() == [True, False, True, True]
        assert not blocked[0 * 2 + head, 1:].any()  # fully blocked rows are unblocked
        assert not blocked[1 * 2 + head].any()

    # through the attention: a fully blocked query gets unmasked attention; query 0 of image 0
    # gets the value of key 1 alone (softmax over one key)
    layer = CrossAttentionLayer(16, 2).eval()
    queries, memory = torch.randn(3, 2, 16), torch.randn(4, 2, 16)
    with torch.no_grad():
        masked = layer.multihead_attn(queries, memory, memory, attn_mask=blocked, need_weights=False)[0]
        free = layer.multihead_attn(queries, memory, memory, need_weights=False)[0]
        one_key = layer.multihead_attn(queries[:1, :1], memory[1:2, :1], memory[1:2, :1], need_weights=False)[0]
    torch.testing.assert_close(masked[1:, 0], free[1:, 0])
    torch.testing.assert_close(masked[:, 1], free[:, 1])
    torch.testing.assert_close(masked[0, 0], one_key[0, 0])


# ---------------------------------------------------------------- HCFormer+ encoder
def test_res5_encoder_equals_a_stack_of_torch_encoder_layers():
    """1×1 conv + GroupNorm(32), sine codes added to queries and keys only, then post-norm DETR
    layers: rebuilt from torch's nn.TransformerEncoderLayer modules, loaded with the same
    state-dict keys (the original checkpoints' names)."""
    torch.manual_seed(0)
    encoder = Res5TransformerEncoder(in_channels=48, d_model=64, nhead=4, num_layers=3, dim_feedforward=96).eval()
    x = torch.randn(2, 48, 3, 5)
    torch_layers = nn.ModuleList(
        nn.TransformerEncoderLayer(64, 4, 96, dropout=0.0, activation="relu", norm_first=False) for _ in range(3)
    ).eval()
    for ours, theirs in zip(encoder.encoder.layers, torch_layers):
        theirs.load_state_dict(ours.state_dict(), strict=True)

    with torch.no_grad():
        proj = F.group_norm(F.conv2d(x, encoder.input_proj[0].weight, encoder.input_proj[0].bias), 32,
                            encoder.input_proj[1].weight, encoder.input_proj[1].bias)
        pos = PositionEmbeddingSine(32)(proj).flatten(2).permute(2, 0, 1)
        seq = proj.flatten(2).permute(2, 0, 1)
        for layer in torch_layers:
            attended = layer.self_attn(seq + pos, seq + pos, seq, need_weights=False)[0]
            seq = layer.norm1(seq + attended)
            seq = layer.norm2(seq + layer.linear2(F.relu(layer.linear1(seq))))
        expected = seq.permute(1, 2, 0).reshape(2, 64, 3, 5)
        torch.testing.assert_close(encoder(x), expected, atol=1e-5, rtol=1e-5)
        # the composition above is torch's own layer when there are no positions
        plain = torch.randn(15, 2, 64)
        by_hand = torch_layers[0].norm1(plain + torch_layers[0].self_attn(plain, plain, plain)[0])
        by_hand = torch_layers[0].norm2(by_hand + torch_layers[0].linear2(F.relu(torch_layers[0].linear1(by_hand))))
        torch.testing.assert_close(torch_layers[0](plain), by_hand, atol=1e-5, rtol=1e-5)

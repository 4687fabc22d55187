"""The Super Token Transformer (STT) block: CPE, STA and ConvFFN, each a residual branch."""
from typing import Sequence, Union

from detectron2.layers import get_norm
from timm.layers import DropPath, LayerNorm2d, LayerScale2d
from torch import Tensor, nn

from .super_token_attention import SuperTokenAttention


class ResidualDWConv(nn.Module):
    """x + DWConv3×3(x): SViT's convolutional position embedding, also inside its ConvFFN."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class ConvFFN(nn.Module):
    """1×1 conv → GELU → (y + DWConv3×3(y)) → 1×1 conv, on (B, C, H, W) maps."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.dwconv = ResidualDWConv(hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.dwconv(x)))


class SuperTokenBlock(nn.Module):
    """x ← x + DWConv(x); x ← x + DropPath(γ1·STA(LN(x))); x ← x + DropPath(γ2·ConvFFN(BN(x))).

    Args:
        dim: channels C.
        num_heads: heads of the attention among super tokens.
        grid: super-token grid of the STA (1 = global attention).
        n_iter: association rounds of the STA.
        mlp_ratio: hidden channels of the ConvFFN / C.
        qkv_bias: bias of the q/k/v projection.
        drop, attn_drop: dropout after projections / of the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        layer_scale: learnable per-channel scales γ of the two branches (initialised to
            ``layer_scale_init``), as SViT-B/L in their last two stages.
        norm: the normalisation before the ConvFFN (detectron2 ``get_norm`` name; "BN" as
            released). The LayerNorm before the STA has eps 1e-6 as released.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Union[int, Sequence[int]] = 1,
        n_iter: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: bool = False,
        layer_scale_init: float = 1e-6,
        norm: str = "BN",
    ):
        super().__init__()
        self.cpe = ResidualDWConv(dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.attn = SuperTokenAttention(dim, num_heads, grid, n_iter, qkv_bias, attn_drop, drop)
        self.ls1 = LayerScale2d(dim, layer_scale_init) if layer_scale else nn.Identity()
        self.norm2 = get_norm(norm, dim)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio), drop)
        self.ls2 = LayerScale2d(dim, layer_scale_init) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W), any H and W."""
        x = self.cpe(x)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.ffn(self.norm2(x))))

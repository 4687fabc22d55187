"""Multi-head self-attention over the cells of a (B, C, H, W) map, with 1×1-conv projections."""
import torch.nn.functional as F
from torch import Tensor, nn


class ConvSelfAttention(nn.Module):
    """Global multi-head self-attention of the H·W tokens of a map: SViT's MHSA on super tokens.

    q, k and v come from one 1×1 conv to 3C channels laid out *per head* — head i owns the
    channels [3·d·i, 3·d·(i+1)) as (q_i, k_i, v_i), d = C / heads — which is the layout of the
    released checkpoints (not the (q, k, v) × heads layout of timm's ViT).

    Args:
        dim: channels C.
        num_heads: attention heads; must divide C.
        qkv_bias: bias of the q/k/v projection.
        attn_drop: dropout of the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide {dim} channels")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W); every cell attends to all cells."""
        B, C, H, W = x.shape
        qkv = self.qkv(x).reshape(B, self.num_heads, 3 * C // self.num_heads, H * W)
        q, k, v = (t.transpose(-1, -2) for t in qkv.chunk(3, dim=2))  # (B, heads, HW, d) each
        # PyTorch's fused kernel; its default scale d^-0.5 is SViT's
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        return self.proj_drop(self.proj(out))

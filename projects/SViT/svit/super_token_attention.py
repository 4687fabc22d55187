"""Super Token Attention (SViT, §3.2): sample super tokens, attend among them, map them back.

The three steps are the project's local clustering primitive (``hcformer.layers.
local_clustering``) with a grid of g × g tokens per super token:

1. sampling: the initial super tokens average the tokens of each grid cell; each token is
   associated with the 3×3 super tokens around its cell, Q = softmax over those 9 of
   x·s / sqrt(C) (``affinity``; candidates outside the map are -inf, so they get no weight);
   the super tokens become the Q-weighted means of their tokens (``scatter`` sums divided by
   the summed weights + 1e-12). With N_ITER > 1 the association is recomputed from the
   updated super tokens.
2. multi-head self-attention among the super tokens (``ConvSelfAttention``);
3. upsampling: every token is the Q-weighted sum of its 9 super tokens (``gather``).

As in the released model, Q is computed without gradient: the gradient reaches the tokens
through the weighted means and the upsampling only. Maps whose sides are not grid multiples
are zero-padded at the bottom / right (the padding takes part in the averages and the
association, as released) and cropped back. A grid of 1 skips steps 1 and 3: plain global
attention over the tokens.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcformer.layers.local_clustering import affinity, gather, pair, scatter

from .attention import ConvSelfAttention

# Added to the summed association weights of a super token before dividing by them.
EPS = 1e-12


def sample_super_tokens(
    x: Tensor, grid: Tuple[int, int], n_iter: int = 1, scale: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """Super-token sampling (step 1) on a map whose sides are multiples of ``grid``.

    Args:
        x: (B, C, H, W) tokens, H and W multiples of grid = (gy, gx).
        n_iter: rounds of association (≥ 1); the super tokens of the last round are returned.
        scale: multiplies the token · super-token similarity; C^-0.5 by default.
    Returns:
        super_tokens: (B, C, H / gy, W / gx) association-weighted means of the tokens,
            differentiable with respect to ``x``;
        association: (B, 9, H, W) softmax weights of every token over its 3×3 candidate
            super tokens (row-major offsets, see ``candidate_offsets``), without gradient.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    B, C, H, W = x.shape
    gy, gx = grid
    if H % gy or W % gx:
        raise ValueError(f"map {H}x{W} is not a multiple of the grid {gy}x{gx}")
    size = (H // gy, W // gx)
    scale = C**-0.5 if scale is None else scale
    with torch.no_grad():
        # the mean of each grid cell: a pooling of constant kernel (the sides are grid multiples),
        # so that the graph exports (ONNX has no adaptive pooling to a computed size)
        tokens = F.avg_pool2d(x, kernel_size=grid, stride=grid)
        for i in range(n_iter):
            # scaling the (fewer) super tokens rather than the tokens: same logits, less work
            association = affinity(x, tokens * scale, grid=grid, kernel=3).softmax(dim=1)
            if i < n_iter - 1:
                sums, weight = scatter(x, association, size, grid=grid, kernel=3)
                tokens = sums / (weight + EPS)
    # the last update outside no_grad: differentiable in x; the weights carry no gradient
    sums, weight = scatter(x, association, size, grid=grid, kernel=3)
    return sums / (weight + EPS), association


class SuperTokenAttention(nn.Module):
    """STA on a (B, C, H, W) map of any size.

    Args:
        dim: channels C.
        num_heads: heads of the attention among super tokens.
        grid: side(s) of the grid cell that makes one initial super token; 1 = global attention.
        n_iter: association rounds of the sampling.
        qkv_bias, attn_drop, proj_drop: of the attention (``ConvSelfAttention``).

    Set ``keep_association = True`` to keep the last forward's association (B, 9, H, W) (cropped
    to the input size) in ``self.association``, e.g. to draw the super tokens
    (``svit.super_token_hierarchy``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Union[int, Sequence[int]] = 1,
        n_iter: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.grid = pair(grid)
        if min(self.grid) < 1:
            raise ValueError(f"grid must be positive, got {self.grid}")
        self.n_iter = n_iter
        self.scale = dim**-0.5
        self.mhsa = ConvSelfAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.keep_association = False
        self.association: Optional[Tensor] = None

    @property
    def samples_super_tokens(self) -> bool:
        return self.grid != (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        if not self.samples_super_tokens:
            return self.mhsa(x)
        H, W = x.shape[-2:]
        gy, gx = self.grid
        # padded even by 0: a traced graph then pads at every input size, not only at the traced one
        x = F.pad(x, (0, -W % gx, 0, -H % gy))
        tokens, association = sample_super_tokens(x, self.grid, self.n_iter, self.scale)
        if self.keep_association:
            self.association = association[..., :H, :W]
        out = gather(self.mhsa(tokens), association, grid=self.grid, kernel=3)
        return out[..., :H, :W]

    def extra_repr(self) -> str:
        return f"grid={self.grid}, n_iter={self.n_iter}"

"""Dense references of the super-token computations: every token compared with every super
token (N × M products), masked to the 3×3 neighbourhood of the token's grid cell."""
from typing import Tuple

import torch

from hcformer.layers.local_clustering import candidate_offsets
from svit.attention import ConvSelfAttention
from svit.super_token_attention import EPS


def neighbourhood(H: int, W: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Bool (H·W, h·w): super token t is one of the 3×3 around the cell of token p."""
    gy, gx = grid
    h, w = -(-H // gy), -(-W // gx)
    py, px = (torch.arange(H) // gy).repeat_interleave(W), (torch.arange(W) // gx).repeat(H)
    ty, tx = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    return ((py[:, None] - ty[None]).abs() <= 1) & ((px[:, None] - tx[None]).abs() <= 1)


def dense_sampling(x: torch.Tensor, grid: Tuple[int, int], n_iter: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(super tokens (B, M, C), association Q (B, N, M)) of a map whose sides are grid multiples,
    with dense N × M products; Q is constant (no gradient), the super tokens are not."""
    B, C, H, W = x.shape
    gy, gx = grid
    pixels = x.flatten(2).transpose(1, 2)  # (B, N, C)
    mask = neighbourhood(H, W, grid)
    tokens = x.reshape(B, C, H // gy, gy, W // gx, gx).mean((3, 5)).flatten(2).transpose(1, 2)
    for _ in range(n_iter):
        logits = pixels.detach() @ tokens.detach().transpose(1, 2) * C**-0.5
        q = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        tokens = q.transpose(1, 2) @ pixels / (q.sum(1)[..., None] + EPS)
    return tokens, q


def to_dense(association: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """(B, 9, H, W) weights over the 3×3 candidates → (B, H·W, h·w) over all super tokens."""
    B, K, H, W = association.shape
    gy, gx = grid
    h, w = -(-H // gy), -(-W // gx)
    dense = association.new_zeros(B, H * W, h * w)
    py, px = (torch.arange(H) // gy).repeat_interleave(W), (torch.arange(W) // gx).repeat(H)
    flat = association.flatten(2)
    for k, (dy, dx) in enumerate(candidate_offsets(3)):
        ty, tx = py + dy, px + dx
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        p = torch.nonzero(inside)[:, 0]
        dense[:, p, ty[p] * w + tx[p]] += flat[:, k, p]
    return dense


def dense_attention(attn: ConvSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Global MHSA written out, with q/k/v channels grouped per head: head i reads channels
    [3di, 3di + d) as q, the next d as k, the next d as v."""
    B, C, H, W = x.shape
    heads, d = attn.num_heads, C // attn.num_heads
    qkv = torch.einsum("oc,bcn->bon", attn.qkv.weight[:, :, 0, 0], x.flatten(2)) + attn.qkv.bias[:, None]
    outs = []
    for i in range(heads):
        q, k, v = (qkv[:, 3 * d * i + j * d : 3 * d * i + (j + 1) * d] for j in range(3))  # (B, d, N)
        a = (q.transpose(1, 2) @ k * d**-0.5).softmax(-1)  # (B, N query, N key)
        outs.append(v @ a.transpose(1, 2))
    out = torch.cat(outs, 1)
    out = torch.einsum("oc,bcn->bon", attn.proj.weight[:, :, 0, 0], out) + attn.proj.bias[:, None]
    return out.reshape(B, C, H, W)

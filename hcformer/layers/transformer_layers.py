"""Post-norm (or pre-norm) transformer layers with positional codes added to queries / keys.

Parameter names match those of the original HCFormer (and Mask2Former) checkpoints.
"""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


def xavier_init_(module: nn.Module) -> None:
    """DETR's initialisation: xavier-uniform for every weight matrix of ``module``, in
    ``parameters()`` order; vectors (biases, norms) keep theirs."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """x ← norm(x + SelfAttn(x + pos, x + pos, x)); sequence-first (L, B, C)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init_(self)

    def forward(self, x: Tensor, pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None) -> Tensor:
        y = self.norm(x) if self.pre_norm else x
        q = k = _with_pos(y, pos)
        y = self.self_attn(q, k, y, attn_mask=attn_mask, need_weights=False)[0]
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norm(x)


class CrossAttentionLayer(nn.Module):
    """x ← norm(x + Attn(x + query_pos, memory + pos, memory, attn_mask))."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init_(self)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        attn_mask: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
    ) -> Tensor:
        y = self.norm(x) if self.pre_norm else x
        y = self.multihead_attn(_with_pos(y, query_pos), _with_pos(memory, pos), memory, attn_mask=attn_mask, need_weights=False)[0]
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norm(x)


class FFNLayer(nn.Module):
    """x ← norm(x + W2 relu(W1 x))."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x) if self.pre_norm else x
        y = self.linear2(self.dropout(F.relu(self.linear1(y))))
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.TransformerEncoderLayer):
    """DETR encoder layer (post-norm, ReLU): torch's layer (its parameters and their names,
    initialised in its order), with positions added to the queries and keys of self-attention."""

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        q = k = _with_pos(x, pos)
        x = self.norm1(x + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0]))
        y = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(y))


class DecoderLayer(nn.TransformerDecoderLayer):
    """DETR decoder layer (post-norm, ReLU): torch's layer, with positions added to the queries
    (query_pos) and keys (pos for the memory) of both attentions."""

    def forward(self, tgt: Tensor, memory: Tensor, pos: Optional[Tensor], query_pos: Optional[Tensor]) -> Tensor:
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        y = self.multihead_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(y))
        y = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(y))

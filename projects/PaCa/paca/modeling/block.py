"""The PaCa Transformer block and a stage of them (paper Fig. 3 and Fig. 7)."""
from typing import List, Optional, Sequence, Tuple

from timm.layers import DropPath
from torch import Tensor, nn

from .attention import PaCaAttention
from .clustering import soft_assignment


class ConvFFN(nn.Module):
    """fc1 → (y + DW3×3(y)) → GELU → fc2.

    The inverted-residual FFN of PVTv2 with a shortcut over the depth-wise conv: the conv is
    the model's only source of position information (there is no position embedding), and the
    shortcut lets it act as a conditional position encoding rather than replace the features.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dw = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """(B, N, C) tokens of an H×W map → (B, N, C)."""
        B, N, _ = x.shape
        y = self.fc1(x)
        y2d = y.transpose(1, 2).reshape(B, -1, *hw)
        y = y + self.dw(y2d).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(y))))


class PaCaBlock(nn.Module):
    """Pre-norm block: x + DropPath(PaCa(LN(x))), x + DropPath(FFN(LN(x))).

    A block with a ``clustering`` module computes the cluster assignment from its own
    normalised input; a block without one uses the assignment it is given (stage-wise
    sharing, or the external teacher's). Either way the cluster tokens are pooled from this
    block's input, so every block sees clusters of its own features.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_clusters: int,
        clustering: Optional[nn.Module] = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.clustering = clustering
        self.attn = PaCaAttention(dim, num_heads, num_clusters, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        hw: Tuple[int, int],
        assignment: Optional[Tensor] = None,
        valid: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """
        Args:
            x: (B, N, C) tokens of an H×W map; hw = (H, W).
            assignment: (B, M, N) assignment to use when the block has no clustering.
            valid: optional bool (B, N), False for padding.
        Returns:
            (B, N, C) tokens, the assignment used (for the next block of the stage) and the
            block's own (B, M, N) cluster logits before the softmax (None when it has no
            clustering): what the visualisation draws.
        """
        y = self.norm1(x)
        logits = None
        if self.clustering is not None:
            logits = self.clustering(y, hw)
            assignment = soft_assignment(logits, valid)
        x = x + self.drop_path1(self.attn(y, assignment, valid))
        x = x + self.drop_path2(self.mlp(self.norm2(x), hw))
        return x, assignment, logits


class PaCaStage(nn.Module):
    """The blocks of one stage, on a (B, C, H, W) map; the downsampling before it is not here.

    Args:
        clustering_modules: one entry per block, the block's clustering module or None.
            Stage-wise clustering: a module for the first block only; block-wise: one per
            block; with the external teacher or M = 0: none.
        drop_path: the stochastic-depth rate of each block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_clusters: int,
        clustering_modules: Sequence[Optional[nn.Module]],
        drop_path: Sequence[float],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        if len(clustering_modules) != len(drop_path):
            raise ValueError("one clustering entry and one drop-path rate per block")
        self.blocks = nn.ModuleList(
            PaCaBlock(dim, num_heads, num_clusters, clustering, mlp_ratio, qkv_bias, drop_path=rate)
            for clustering, rate in zip(clustering_modules, drop_path)
        )

    def forward(
        self, x: Tensor, valid: Optional[Tensor] = None, cluster_logits: Optional[Tensor] = None
    ) -> Tuple[Tensor, List[Optional[Tensor]]]:
        """
        Args:
            x: (B, C, H, W) input map.
            valid: optional bool (B, 1, H, W), False for cells in the batch padding.
            cluster_logits: (B, M, H, W) assignment logits from outside the stage (the
                teacher); None when the blocks cluster themselves, or M = 0.
        Returns:
            (B, C, H, W) output map, and per block its own (B, M, H, W) cluster logits (None
            for a block that reuses an assignment or has none).
        """
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        valid_tokens = valid.flatten(1) if valid is not None else None
        assignment = None
        if cluster_logits is not None:
            assignment = soft_assignment(cluster_logits.flatten(2), valid_tokens)
        block_logits = []
        for block in self.blocks:
            tokens, assignment, logits = block(tokens, (H, W), assignment, valid_tokens)
            block_logits.append(logits.reshape(B, -1, H, W) if logits is not None else None)
        return tokens.transpose(1, 2).reshape(B, C, H, W), block_logits

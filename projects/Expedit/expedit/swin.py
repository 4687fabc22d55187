"""Window token clustering / reconstruction in one stage of an HC-Swin (Expedit for Swin).

Inside every K × K attention window of the stage, the tokens after block α are clustered
into k × k centres; the stage's later blocks run on the clustered map with k × k windows
(shift k // 2, masks recomputed for the clustered size) and relative-position-bias tables
bilinearly resized from (2K-1)² to (2k-1)²; the tokens are reconstructed before the patch
merging, so the stage's output (res4 for stage 2) and everything after keep their size.

Nothing is trained and no parameter is added: ``ExpeditSwinStage`` replaces a ``SwinStage``
in ``HCSwin.layers`` and reuses its very modules under the same names (``blocks``,
``downsample``, ``clustering``), so the state dict, hence any checkpoint of the model, is
unchanged. The resized bias tables are computed from the blocks' own tables at every call
(a few thousand numbers per block), so weights loaded after ``expedite_swin`` are honoured.
"""
from functools import partial
from typing import Optional, Tuple

import torch.nn.functional as F
from timm.layers import resize_rel_pos_bias_table_levit
from timm.models.swin_transformer import get_relative_position_index, window_partition, window_reverse
from torch import Tensor, nn

from hcformer.modeling.backbone.pyramid import checkpointed
from hcformer.modeling.backbone.swin import HCSwin, SwinBlock, SwinStage, shifted_window_mask

from .token_clustering import clustering_macs, token_clustering, token_reconstruction

__all__ = ["interpolate_rel_pos_bias", "ExpeditSwinStage", "expedite_swin"]


def interpolate_rel_pos_bias(table: Tensor, window: int) -> Tensor:
    """Bilinearly resize a ((2K-1)², heads) bias table to ((2k-1)², heads), k = ``window``
    (timm's LeViT table resize without antialiasing: float32 inside, the table's dtype out).

    With ``align_corners=False`` a relative offset d of the k-grid reads the K-grid at offset
    d·(2K-1)/(2k-1) ≈ d·K/k, the distance in tokens between two clusters d cells apart.
    """
    size = ((2 * window - 1) ** 2, table.shape[1])
    return resize_rel_pos_bias_table_levit(table, size, interpolation="bilinear", antialias=False)


def _window_attention(attn: nn.Module, bias: Tensor, x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """timm's ``WindowAttention`` forward with a given relative position bias.

    Args:
        attn: the block's ``WindowAttention`` (its qkv / proj / scale / heads are used).
        bias: (heads, N, N) relative position bias.
        x: (num_windows·B, N, C) tokens of each window.
        mask: (num_windows, N, N) shifted-window mask or None.
    """
    Bw, N, C = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(Bw, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    attn_mask = bias.to(q.dtype)[None]  # (1, heads, N, N)
    if mask is not None:  # windows are batch-major, the mask is per window
        windows = mask.shape[0]
        attn_mask = (attn_mask[None] + mask.to(q.dtype)[None, :, None]).reshape(-1, heads, N, N)
        attn_mask = attn_mask.expand(Bw // windows, -1, -1, -1, -1).reshape(Bw, heads, N, N)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=attn.scale)
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(Bw, N, -1)))


def _clustered_block(block: SwinBlock, x: Tensor, window: int, mask: Optional[Tensor]) -> Tensor:
    """``block`` on the clustered map, with windows of ``window`` (shifted by ``window // 2``
    when the block is a shifted one) and the resized bias table.

    Args:
        x: (B, h, w, C) clustered map; mask: ``shifted_window_mask`` of its padded size.
    """
    table = interpolate_rel_pos_bias(block.attn.relative_position_bias_table, window)
    index = get_relative_position_index(window, window).to(x.device).view(-1)
    bias = table[index].view(window * window, window * window, -1).permute(2, 0, 1)
    shift = window // 2 if block.shift else 0
    return block.forward_windows(x, window, shift, partial(_window_attention, block.attn, bias), mask)


def _clustered_extent(tokens: int, K: int, k: int) -> int:
    """Clusters along one axis of a map of ``tokens`` cut into windows of K, k per window:
    full windows give k; the last, partial one only the clusters whose pooling bin holds a
    token (bin j starts at token floor(j·K/k))."""
    full, rest = divmod(tokens, K)
    return full * k + sum(1 for j in range(k) if j * K // k < rest)


class ExpeditSwinStage(nn.Module):
    """A ``SwinStage`` whose blocks from ``first_clustered`` on run on k × k window clusters.

    Args:
        stage: the HC-Swin stage; its modules are reused (same names, same parameters).
        first_clustered: index, within the stage, of the first block that sees clusters
            (the blocks before it see all tokens).
        cluster_window: k, clusters per window side (k ≤ K, the stage's window).
        kernel, iterations, temperature, topk: λ, κ, t and the top-k of ``token_clustering``.

    After each forward, ``last_clustering_macs`` holds the multiply-adds of the clustering
    and reconstruction products (which fvcore does not see; see ``clustering_macs``).
    """

    def __init__(
        self,
        stage: SwinStage,
        first_clustered: int,
        cluster_window: int,
        kernel: int = 7,
        iterations: int = 5,
        temperature: float = 0.05,
        topk: int = 10,
    ):
        super().__init__()
        if not 0 <= first_clustered < len(stage.blocks):
            raise ValueError(f"the first clustered block must be one of the stage's {len(stage.blocks)}, got {first_clustered}")
        if not 1 <= cluster_window <= stage.window_size:
            raise ValueError(f"cluster window must be in [1, {stage.window_size}] (the stage's window), got {cluster_window}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"λ (kernel) must be a positive odd number, got {kernel}")
        # the stage's own modules, under the names the checkpoints use
        self.blocks = stage.blocks
        self.downsample = stage.downsample
        self.clustering = stage.clustering
        self.window_size = stage.window_size
        self.shift = stage.shift
        self.use_checkpoint = stage.use_checkpoint
        self.first_clustered = first_clustered
        self.cluster_window = cluster_window
        self.kernel = kernel
        self.iterations = iterations
        self.temperature = temperature
        self.topk = topk
        self.last_clustering_macs = 0

    def extra_repr(self) -> str:
        return (
            f"clusters from block {self.first_clustered}: {self.window_size}x{self.window_size} -> "
            f"{self.cluster_window}x{self.cluster_window} per window, λ={self.kernel}, κ={self.iterations}, "
            f"t={self.temperature}, top-k={self.topk}"
        )

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Same contract as ``SwinStage.forward``: (out (B, H, W, C), down)."""
        B, H, W, C = (int(n) for n in x.shape)  # plain ints also under tracing (fvcore)
        K, k = self.window_size, self.cluster_window
        Hp, Wp = H + -H % K, W + -W % K
        mask = shifted_window_mask(Hp, Wp, K, self.shift, x.device).to(x.dtype) if self.shift else None
        for block in self.blocks[: self.first_clustered]:
            x = checkpointed(self.use_checkpoint and self.training, block, x, mask)

        # cluster each K × K window (zero padding to window multiples, excluded from clusters)
        padded = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        windows = window_partition(padded, (K, K)).permute(0, 3, 1, 2)  # (B·n, C, K, K)
        valid = None
        if (Hp, Wp) != (H, W):
            inside = x.new_zeros(1, Hp, Wp, 1)
            inside[:, :H, :W] = 1
            valid = window_partition(inside, (K, K)).permute(0, 3, 1, 2).repeat(B, 1, 1, 1) > 0
        clustering = token_clustering(windows, (k, k), self.kernel, self.iterations, self.temperature, self.topk, valid)
        n_rows, n_cols = Hp // K, Wp // K
        z = window_reverse(clustering.centres.permute(0, 2, 3, 1).to(x.dtype), (k, k), n_rows * k, n_cols * k)
        h, w = _clustered_extent(H, K, k), _clustered_extent(W, K, k)
        z = z[:, :h, :w]

        shift_k = k // 2
        mask_k = None
        if shift_k:
            mask_k = shifted_window_mask(h + -h % k, w + -w % k, k, shift_k, x.device).to(x.dtype)
        for block in self.blocks[self.first_clustered :]:
            z = checkpointed(self.use_checkpoint and self.training, _clustered_block, block, z, k, mask_k)

        # reconstruct every window's K × K tokens from its refined k × k clusters
        z = F.pad(z, (0, 0, 0, n_cols * k - w, 0, n_rows * k - h))
        refined = window_partition(z, (k, k)).permute(0, 3, 1, 2)
        tokens = token_reconstruction(refined, clustering).to(x.dtype)
        x = window_reverse(tokens.permute(0, 2, 3, 1), (K, K), Hp, Wp)[:, :H, :W].contiguous()
        self.last_clustering_macs = clustering_macs(
            int(windows.shape[0]), C, (k, k), clustering.layout.grid, self.kernel, self.iterations
        )
        return x, None if self.downsample is None else self.downsample(x)


def expedite_swin(
    backbone: HCSwin,
    stage: int = 2,
    alpha: int = 10,
    cluster_window: int = 8,
    kernel: int = 7,
    iterations: int = 5,
    temperature: float = 0.05,
    topk: int = 10,
) -> HCSwin:
    """Put Expedit's window clustering into ``backbone.layers[stage]``, in place.

    Args:
        backbone: an ``HCSwin`` (the backbone of HC-Swin and HCFormer+ Swin models).
        stage: 0-based stage index (2: the third stage, as in the paper).
        alpha: the paper's α, the number of blocks *of the whole backbone* before the
            clustering (Swin-L, depths 2-2-18-2: α = 10 clusters after the 6th block of the
            third stage). It must fall inside ``stage``.
        cluster_window, kernel, iterations, temperature, topk: k, λ, κ, t, top-k.
    Returns:
        ``backbone`` (modified).
    """
    if not isinstance(backbone, HCSwin):
        raise TypeError(f"Expedit needs an HCSwin backbone, got {type(backbone).__name__}")
    current = backbone.layers[stage]
    if isinstance(current, ExpeditSwinStage):
        raise ValueError(f"stage {stage} is already expedited")
    before = sum(len(backbone.layers[i].blocks) for i in range(stage))
    depth = len(current.blocks)
    if not before <= alpha < before + depth:
        raise ValueError(
            f"MODEL.EXPEDIT.ALPHA = {alpha} is not inside stage {stage}, whose blocks are {before}..{before + depth - 1} "
            f"(α counts the blocks before the clustering over the whole backbone)"
        )
    backbone.layers[stage] = ExpeditSwinStage(
        current, alpha - before, cluster_window, kernel, iterations, temperature, topk
    )
    return backbone

"""The clustering module of HCFormer, eq. (3): soft assignment of fine pixels to coarse cells."""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .local_clustering import affinity


class ClusteringLayer(nn.Module):
    """A = Softmax_row(cos(F, F_d) / |s|) over the 3×3 coarse cells around each parent.

    The fine map (before a stride-2 downsampling) and the coarse map (after it) are each
    layer-normed over channels, projected to ``emb_dim`` by a 1×1 conv without bias and
    L2-normalised, so the similarity is a cosine. ``temp`` is the learnable scale s of the
    paper, initialised to ``init_scale``; |s| → 0 makes the assignment hard (eq. (2)).

    Training keeps only the assignment for backward and recomputes the embeddings and
    similarities from the backbone features, which backward keeps anyway: the normalised and
    projected copies of the stride-4 features would otherwise be the largest activations of
    the backbone (≈ 200 MiB of a 512² batch of 2 for R50), for a recomputation of a few 1×1
    convolutions.

    Parameter names match the original implementation's checkpoints.
    """

    def __init__(self, fine_channels: int, coarse_channels: int, emb_dim: int = 128, init_scale: float = 0.1):
        super().__init__()
        # over the channels of the NCHW maps, with nn.LayerNorm's eps (the original's)
        self.fine_norm = LayerNorm2d(fine_channels, eps=1e-5)
        self.coarse_norm = LayerNorm2d(coarse_channels, eps=1e-5)
        self.fine_emb = nn.Conv2d(fine_channels, emb_dim, 1, bias=False)
        self.coarse_emb = nn.Conv2d(coarse_channels, emb_dim, 1, bias=False)
        self.temp = nn.Parameter(torch.tensor([float(init_scale)]))
        nn.init.xavier_normal_(self.fine_emb.weight)
        nn.init.xavier_normal_(self.coarse_emb.weight)

    def forward(self, fine: Tensor, coarse: Tensor, coarse_valid: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            fine: (B, C_f, H, W) features before the downsampling layer.
            coarse: (B, C_c, h, w) features after it, h = ceil(H / 2).
            coarse_valid: optional bool (B, 1, h, w), False for cells in the padding added
                for size divisibility: they are never candidates.
        Returns:
            (B, 9, H, W) soft assignment of each fine pixel to its 9 candidate cells.
        """
        if torch.is_grad_enabled():
            logits = checkpoint(self.logits, fine, coarse, coarse_valid, use_reentrant=False)
        else:
            logits = self.logits(fine, coarse, coarse_valid)
        # The softmax of sim/|s| with |s| ~ 0.1 and below is sensitive: keep it in fp32.
        with torch.autocast(device_type=fine.device.type, enabled=False):
            return logits.softmax(dim=1)

    def logits(self, fine: Tensor, coarse: Tensor, coarse_valid: Optional[Tensor] = None) -> Tensor:
        """(B, 9, H, W) fp32 similarities cos(F, F_d) / |s| of the candidates, -inf for excluded ones."""
        f = F.normalize(self.fine_emb(self.fine_norm(fine)), dim=1)
        c = F.normalize(self.coarse_emb(self.coarse_norm(coarse)), dim=1)
        with torch.autocast(device_type=fine.device.type, enabled=False):
            # Scale before the affinity: excluded candidates are -inf, and -inf / |s| would
            # give the scale a NaN gradient.
            f = f.float() / self.temp.abs()
            return affinity(f, c.float(), grid=2, kernel=3, coarse_valid=coarse_valid)

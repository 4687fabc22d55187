"""A stage's super tokens as a one-level clustering hierarchy, for the hierarchy visualiser and
the undersegmentation-error evaluation.

The association of a super-token attention — every token's softmax weights over the 3×3 super
tokens around its grid cell — is the same kind of assignment as an HCFormer clustering layer,
with a grid of g × g tokens per coarse cell instead of 2 × 2. ``SuperTokenHierarchy`` is a
``LocalGridHierarchy`` with that grid: level 0 is the stage's token grid, level 1 the super
tokens (``hard_labels(1)``: the most likely super token of every token).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hcformer.layers.local_clustering import gather, hard_assignment
from hcformer.modeling.hierarchy import LocalGridHierarchy

from .model import STEM_STRIDE, SViT
from .super_token_attention import SuperTokenAttention


class SuperTokenHierarchy(LocalGridHierarchy):
    """Tokens of a stage (fine grid, stride ``stride``) → its super tokens (coarse grid).

    Args:
        association: (B, 9, H, W) association of the H × W tokens with their 3×3 candidate super
            tokens (``SuperTokenAttention.association``).
        grid: (gy, gx) tokens per super-token cell; the super-token grid is ceil(H/gy) × ceil(W/gx).
        stride: stride of the token grid with respect to the input image.
    """

    def __init__(self, association: Tensor, grid: Tuple[int, int], stride: int):
        H, W = association.shape[-2:]
        gy, gx = grid
        super().__init__([association], (-(-H // gy), -(-W // gx)), coarsest_stride=stride * max(gy, gx))
        self.grid = (gy, gx)
        self.stride = stride

    @property
    def finest_stride(self) -> int:
        return self.stride

    @property
    def level_strides(self) -> Tuple[Tuple[int, int], ...]:
        """(stride_y, stride_x) of the cells of level 0 and level 1 (a super-token cell spans
        g tokens per axis, not 2 as the clustering layers' ``finest_stride · 2^level`` says)."""
        gy, gx = self.grid
        return (self.stride, self.stride), (self.stride * gy, self.stride * gx)

    def decode(self, x: Tensor, levels: Optional[int] = None) -> Tensor:
        """(B, C, super-token grid) → (B, C, token grid) through the soft association."""
        levels = self.num_levels if levels is None else levels
        if levels not in (0, 1):
            raise ValueError(f"levels must be 0 or 1, got {levels}")
        return gather(x, self.assignments[0], grid=self.grid, kernel=3) if levels else x

    def hard_labels(self, level: int, output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """(B, H', W') int64: the token id (level 0) or the most likely super token (level 1)."""
        association = self.assignments[0]
        B, _, H, W = association.shape
        if level == 0:
            labels = torch.arange(H * W, device=association.device).reshape(1, H, W).expand(B, -1, -1)
        elif level == 1:
            labels = hard_assignment(association, self.coarsest_size, grid=self.grid, kernel=3)
        else:
            raise ValueError(f"level must be 0 or 1, got {level}")
        if output_size is not None:
            # float64 keeps every id exact through the nearest-neighbour resize
            labels = F.interpolate(labels[:, None].double(), size=output_size, mode="nearest")[:, 0].long()
        return labels


def super_token_hierarchy(attention: SuperTokenAttention, stride: int) -> SuperTokenHierarchy:
    """The hierarchy of the association kept by ``attention`` in its last forward pass (run it
    with ``attention.keep_association = True``); ``stride``: that of the attention's input."""
    if not attention.samples_super_tokens:
        raise ValueError("this attention has a grid of 1: every token is its own super token")
    if attention.association is None:
        raise RuntimeError("no association kept: set keep_association = True and run a forward pass first")
    return SuperTokenHierarchy(attention.association, attention.grid, stride)


@torch.no_grad()
def stage_super_tokens(backbone: SViT, images: Tensor, stage: int, block: int = -1) -> SuperTokenHierarchy:
    """Run ``backbone`` on ``images`` (B, 3, H, W) and return the super tokens of one block.

    Args:
        stage: 0..3 (a stage whose grid is larger than 1: 0 and 1 in the released models).
        block: index of the block within the stage (default: the last).
    """
    attention = backbone.layers[stage].blocks[block].attn
    if not attention.samples_super_tokens:
        raise ValueError(f"stage {stage} has a super-token grid of 1: no super tokens to show")
    attention.keep_association = True
    try:
        backbone(images)
        hierarchy = super_token_hierarchy(attention, STEM_STRIDE * 2**stage)
    finally:
        attention.keep_association = False
        attention.association = None
    return hierarchy


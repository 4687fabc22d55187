"""A stage's super tokens as a one-level clustering hierarchy, for the hierarchy visualiser and
the undersegmentation-error evaluation.

The association of a super-token attention — every token's softmax weights over the 3×3 super
tokens around its grid cell — is the same kind of assignment as an HCFormer clustering layer,
with a grid of g × g tokens per coarse cell instead of 2 × 2: a ``LocalGridHierarchy`` with that
grid. Level 0 is the stage's token grid, level 1 the super tokens (``hard_labels(1)``: the most
likely super token of every token).
"""
import torch
from torch import Tensor

from hcformer.modeling.hierarchy import LocalGridHierarchy

from .model import STEM_STRIDE, SViT
from .super_token_attention import SuperTokenAttention


def super_token_hierarchy(attention: SuperTokenAttention, stride: int) -> LocalGridHierarchy:
    """The hierarchy of the association (B, 9, H, W) kept by ``attention`` in its last forward
    pass (run it with ``attention.keep_association = True``): tokens (stride ``stride``, that of
    the attention's input) → super tokens, ceil(H / g_y) × ceil(W / g_x) of them."""
    if not attention.samples_super_tokens:
        raise ValueError("this attention has a grid of 1: every token is its own super token")
    if attention.association is None:
        raise RuntimeError("no association kept: set keep_association = True and run a forward pass first")
    H, W = attention.association.shape[-2:]
    gy, gx = attention.grid
    return LocalGridHierarchy(
        [attention.association], (-(-H // gy), -(-W // gx)), coarsest_stride=(stride * gy, stride * gx), grid=(gy, gx)
    )


@torch.no_grad()
def stage_super_tokens(backbone: SViT, images: Tensor, stage: int, block: int = -1) -> LocalGridHierarchy:
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


"""ImageNet Swin Transformer weights → HC-Swin names.

Two layouts are understood, both without a ``backbone.`` prefix:

- the official Swin release (``{"model": {...}}``, also what Mask2Former's converter writes to
  ``.pkl``): ``patch_embed.*``, ``layers.{i}.blocks.*``, ``layers.{i}.downsample.*`` at the
  *end* of stage i (i = 0..2), the final ``norm.*`` and the classifier ``head.*``; shifted
  blocks also hold their ``attn_mask`` buffer;
- timm's ``SwinTransformer``: ``layers.{i}.downsample.*`` at the *start* of stage i
  (i = 1..3), ``head.fc.*``, no ``relative_position_index`` buffers.

HC-Swin has the official names (downsample at the end of a stage) and ``norm3`` for the final
norm; the classifier and the attention masks are dropped, missing relative position indices
are recomputed (they are a function of the window size).
"""
import math
import re
from typing import Dict, Iterable, List, Mapping

import numpy as np
import torch
from timm.models.swin_transformer import get_relative_position_index

_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_DOWNSAMPLE_KEY = re.compile(r"^layers\.(\d+)\.downsample\.")
# Swin V2's attention (cosine attention with a learnt scale, continuous position bias MLP)
_SWIN_V2_KEY = re.compile(r"\.attn\.(logit_scale|cpb_mlp\.)")


def is_imagenet_swin(keys: Iterable[str]) -> bool:
    """Whether a state dict is a bare ImageNet Swin Transformer (official or timm names)."""
    keys = set(keys)
    return "patch_embed.proj.weight" in keys and any(_BLOCK_KEY.match(k) for k in keys)


def _is_timm_layout(keys: Iterable[str]) -> bool:
    stages = {int(m[1]) for m in map(_DOWNSAMPLE_KEY.match, keys) if m}
    return bool(stages) and 0 not in stages


def convert_swin_state_dict(state: Mapping[str, object], prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """Rename an ImageNet Swin's weights to HC-Swin's (see the module docstring).

    numpy arrays (``.pkl``) become tensors.
    """
    v2_key = next((k for k in state if _SWIN_V2_KEY.search(k)), None)
    if v2_key is not None:
        raise ValueError(
            f"a Swin Transformer V2 state dict ({v2_key}); HC-Swin is the original Swin Transformer "
            "(relative position bias tables), whose V2 weights it cannot use"
        )
    shift_downsample = _is_timm_layout(state.keys())
    out = {}
    for key, value in state.items():
        if key.startswith("head.") or key.endswith(".attn_mask") or key.endswith("num_batches_tracked"):
            continue
        if key.startswith("norm."):
            key = "norm3." + key[len("norm.") :]
        elif shift_downsample:
            key = _DOWNSAMPLE_KEY.sub(lambda m: f"layers.{int(m[1]) - 1}.downsample.", key)
        out[prefix + key] = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
    # timm does not store the relative position index: recompute it from the bias table
    for key in [k for k in out if k.endswith(".attn.relative_position_bias_table")]:
        index_key = key[: -len("bias_table")] + "index"
        if index_key not in out:
            window = (math.isqrt(out[key].shape[0]) + 1) // 2
            out[index_key] = get_relative_position_index(window, window)
    return out


def swin_architecture(state: Mapping[str, object]) -> Dict[str, object]:
    """MODEL.SWIN.* values of a converted HC-Swin state dict (keys without prefix).

    Returns:
        {"EMBED_DIM", "PATCH_SIZE", "DEPTHS", "NUM_HEADS", "WINDOW_SIZE", "MLP_RATIO",
        "QKV_BIAS", "APE", "PATCH_NORM"}.

    Raises:
        ValueError: the blocks are not in 4 stages, or a tensor the architecture is read from
            is missing (the message names it).
    """
    blocks: Dict[int, int] = {}
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    if sorted(blocks) != [0, 1, 2, 3]:
        raise ValueError(f"expected blocks in 4 stages (layers.0-3.blocks.*), found stages {sorted(blocks)}")
    needed = ["patch_embed.proj.weight", "layers.0.blocks.0.mlp.fc1.weight"]
    needed += [f"layers.{i}.blocks.0.attn.relative_position_bias_table" for i in range(4)]
    missing = [key for key in needed if key not in state]
    if missing:
        raise ValueError(f"the architecture cannot be read: no {', '.join(missing)}")
    proj = state["patch_embed.proj.weight"]
    embed_dim = proj.shape[0]
    heads: List[int] = [state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(4)]
    table_rows = state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    return {
        "EMBED_DIM": int(embed_dim),
        "PATCH_SIZE": int(proj.shape[-1]),
        "DEPTHS": [blocks[i] for i in range(4)],
        "NUM_HEADS": [int(h) for h in heads],
        "WINDOW_SIZE": (math.isqrt(table_rows) + 1) // 2,
        "MLP_RATIO": state["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "QKV_BIAS": "layers.0.blocks.0.attn.qkv.bias" in state,
        "APE": "absolute_pos_embed" in state,
        "PATCH_NORM": "patch_embed.norm.weight" in state,
    }


"""The released ImageNet SViT checkpoints ("STViT") → this project's module names.

Released layout → ours (see ``svit.model`` for our names):

    patch_embed.proj.{i}.*                 → stem.{i}.*              (same Sequential indices)
    layers.{k}.blocks.{j}.pos_embed.conv.* → ...cpe.conv.*
    ...norm1.norm.*                        → ...norm1.*              (timm's LayerNorm2d)
    ...attn.stoken_refine.{qkv,proj}.*     → ...attn.mhsa.{qkv,proj}.* (same per-head q/k/v layout)
    ...mlp2.{fc1,fc2}.*, ...mlp2.conv.conv.* → ...ffn.{fc1,fc2}.*, ...ffn.dwconv.conv.*
    ...gamma_1, ...gamma_2  (1, C, 1, 1)   → ...ls1.gamma, ...ls2.gamma (C,)
    layers.{k}.downsample.proj.{0,1}.*     → layers.{k}.downsample.{0,1}.*
    proj.*, norm.*, head.*                 → kept for ``SViTClassifier``, dropped for a backbone

Dropped: the constant 3×3 "unfold" / "fold" kernels the release keeps as frozen parameters
(``attn.unfold.weights``, ``attn.fold.weights``; the local clustering primitive replaces them)
and BatchNorm's ``num_batches_tracked`` counters.
"""
import argparse
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from hcformer.checkpoint.conversion import read_state_dict

from .model import SVIT_VARIANTS

_RENAMES: List[Tuple[re.Pattern, str]] = [
    (re.compile(r"^patch_embed\.proj\."), "stem."),
    (re.compile(r"\.pos_embed\.conv\."), ".cpe.conv."),
    (re.compile(r"\.norm1\.norm\."), ".norm1."),
    (re.compile(r"\.attn\.stoken_refine\."), ".attn.mhsa."),
    (re.compile(r"\.mlp2\.conv\.conv\."), ".ffn.dwconv.conv."),
    (re.compile(r"\.mlp2\."), ".ffn."),
    (re.compile(r"\.gamma_1$"), ".ls1.gamma"),
    (re.compile(r"\.gamma_2$"), ".ls2.gamma"),
    (re.compile(r"\.downsample\.proj\."), ".downsample."),
]
_DROPPED = re.compile(r"(\.attn\.(unfold|fold)\.weights|\.num_batches_tracked)$")
_CLASSIFIER = re.compile(r"^(proj|norm|head)\.")
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")


def is_released_svit(keys: Iterable[str]) -> bool:
    """Whether a state dict has the released SViT layout (stem + super-token attention)."""
    keys = list(keys)
    return "patch_embed.proj.0.weight" in keys and any(".attn.stoken_refine." in k for k in keys)


def read_released_checkpoint(path: Path) -> Mapping[str, object]:
    """The state dict of a local released checkpoint, read with ``torch.load(weights_only=True)``.

    Training checkpoints of the release hold the model under "model" next to the optimizer
    state and the training arguments (an ``argparse.Namespace``, allowed here and nothing else).
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        return read_state_dict(Path(path), allow_pickle=False)


def convert_released_state_dict(
    state: Mapping[str, object], classifier: bool = False, prefix: str = "backbone."
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a released SViT state dict to ours.

    Args:
        state: the released state dict (tensors or numpy arrays); a "module." prefix of
            DistributedDataParallel is removed.
        classifier: keep the classification head (for ``SViTClassifier``, then use prefix "").
        prefix: put before every key ("backbone." for MODEL.WEIGHTS of an HCFormer model).
    Returns:
        (converted state dict, the keys left out).
    """
    out, dropped = {}, []
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if _DROPPED.search(name) or (not classifier and _CLASSIFIER.match(name)):
            dropped.append(key)
            continue
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        tensor = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
        if name.endswith((".ls1.gamma", ".ls2.gamma")):
            tensor = tensor.reshape(-1)
        out[prefix + name] = tensor
    return out, dropped


def released_architecture(state: Mapping[str, object]) -> Dict[str, object]:
    """MODEL.SVIT.{EMBED_DIMS, DEPTHS, NUM_HEADS, LAYER_SCALE} of a released state dict.

    Channels, depths and layer scale are read from the tensors; the number of heads is not in
    the weights (q/k/v are one 1×1 conv whatever the heads), so it is that of the released
    variant with these channels and depths, or None for an unknown architecture.
    """
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in state]
    depths = [0, 0, 0, 0]
    for key in keys:
        match = _BLOCK.match(key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths[stage], block + 1)
    lookup = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    dims = [int(np.shape(lookup[f"layers.{k}.blocks.0.pos_embed.conv.weight"])[0]) for k in range(4)]
    layer_scale = [f"layers.{k}.blocks.0.gamma_1" in lookup for k in range(4)]
    heads: Optional[List[int]] = None
    for variant in SVIT_VARIANTS.values():
        if list(variant.embed_dims) == dims and list(variant.depths) == depths:
            heads = list(variant.num_heads)
    return {"EMBED_DIMS": dims, "DEPTHS": depths, "NUM_HEADS": heads, "LAYER_SCALE": layer_scale}

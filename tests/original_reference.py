"""What the original HCFormer computes, for equality tests (tests/data/original_*.npz).

The reference outputs were computed by the original implementation (DensoITLab/HCFormer at
3a71416, on CPU) with *formula weights*: every tensor of the state dict is a function of its
key and shape only, so any implementation with the same state-dict layout gets the same
weights without shipping them. The rule (seeded per key with zlib.crc32(key)):

    integer tensors                  unchanged
    *running_var                     0.5 + U[0, 1)
    *running_mean                    0.1 · N(0, 1)
    one-element tensors (scales s)   0.1 + 0.05 · U[0, 1)
    other 1-D *.weight               1 + 0.1 · N(0, 1)
    other 1-D tensors                0.05 · N(0, 1)
    tensors with ≥ 2 dims            N(0, 1) / sqrt(prod(shape[1:]))

drawn in float64 with torch's CPU generator and cast to the tensor's dtype. The input image is
round(U[0, 1) · 255) of shape (3, 256, 384) from torch.Generator().manual_seed(0).
"""
import json
import math
import zlib
from pathlib import Path
from typing import Dict

import numpy as np
import torch

DATA = Path(__file__).parent / "data"


def formula_tensor(key: str, like: torch.Tensor) -> torch.Tensor:
    if not like.is_floating_point():
        return like.clone()
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = tuple(like.shape)

    def uniform():
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    def normal():
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    if key.endswith("running_var"):
        value = 0.5 + uniform()
    elif key.endswith("running_mean"):
        value = 0.1 * normal()
    elif like.numel() == 1:
        value = 0.1 + 0.05 * uniform()
    elif like.dim() == 1:
        value = 1 + 0.1 * normal() if key.endswith("weight") else 0.05 * normal()
    else:
        value = normal() / math.sqrt(max(1, math.prod(shape[1:])))
    return value.to(like.dtype)


def formula_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {key: formula_tensor(key, value) for key, value in state_dict.items()}


def reference_image(height: int = 256, width: int = 384) -> torch.Tensor:
    """uint8 (3, H, W), RGB: the image the reference outputs were computed for."""
    noise = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    return (noise * 255).round().to(torch.uint8)


def load_reference(name: str) -> Dict[str, object]:
    """The arrays of tests/data/<name>.npz as tensors; "keys" as {state-dict key: shape}."""
    with np.load(DATA / f"{name}.npz", allow_pickle=False) as f:
        out = {k: torch.from_numpy(f[k]) for k in f.files if k not in ("keys", "meta")}
        out["keys"] = {k: tuple(v) for k, v in json.loads(str(f["keys"])).items()}
        out["meta"] = json.loads(str(f["meta"]))
    return out

"""What the weight converters (tools/convert-*.py) share: reading a local checkpoint, writing
backbone weights, and the key-by-key report of how they fit a model."""
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping

import torch

from .safe_loading import ALLOW_PICKLE_ENV, load_checkpoint_file


def read_state_dict(path: Path, allow_pickle: bool = True) -> Mapping[str, object]:
    """The state dict in a local checkpoint file.

    The converters are the documented way to read a pickle once (``allow_pickle=True``,
    their default): ``.pkl`` files (detectron2 / Mask2Former conversions, numpy arrays) are
    unpickled, which can run code, so run them only on files you trust. Anything else is read
    with ``torch.load(weights_only=True)`` first. The state dict may be the file's top level or
    under "model" / "state_dict".

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint, holds no state dict, or needs unpickling
            while ``allow_pickle`` is False.
    """
    data = load_checkpoint_file(str(path), allow_pickle=allow_pickle)
    if isinstance(data, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"{path} holds no state dict (found {type(data).__name__})")
    return data


def write_backbone_weights(state: Dict[str, torch.Tensor], path: Path, author: str) -> None:
    """Write ``state`` for MODEL.WEIGHTS: a detectron2-style ``.pkl`` (numpy arrays, "__author__",
    no name-matching heuristics) for a ``.pkl`` path, else ``torch.save({"model": state})``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pkl":
        data = {
            "model": {k: v.numpy() for k, v in state.items()},
            "__author__": author,
            "matching_heuristics": False,
        }
        with open(path, "wb") as f:
            pickle.dump(data, f)
    else:
        torch.save({"model": state}, path)


def weights_hint(path: Path) -> str:
    """How to use a file of ``write_backbone_weights``: a ``.pkl`` is read only when pickles are
    allowed."""
    path = Path(path)
    if path.suffix == ".pkl":
        return (
            f"use: MODEL.WEIGHTS {path} MODEL.ALLOW_PICKLE True (or {ALLOW_PICKLE_ENV}=1): .pkl files are "
            "refused otherwise, since unpickling can run code; an output name ending in .pth needs no flag"
        )
    return f"use: MODEL.WEIGHTS {path}"


@dataclass
class LoadReport:
    """Keys of the model found in the file with the right shape, with another shape, not at
    all; and keys of the file the model does not have."""

    matched: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @classmethod
    def compare(cls, converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> "LoadReport":
        report = cls()
        for key, value in expected.items():
            if key not in converted:
                report.missing.append(key)
            elif tuple(converted[key].shape) == tuple(value.shape):
                report.matched.append(key)
            else:
                report.mismatched.append(f"{key}: file {tuple(converted[key].shape)}, model {tuple(value.shape)}")
        report.unexpected = [k for k in converted if k not in expected]
        return report

    def format(self, expected_missing: Callable[[str], bool] = lambda key: False) -> str:
        """A printable summary; ``expected_missing`` tells missing keys that are fine (e.g. the
        clustering layers, which no ImageNet model has)."""
        fine = [k for k in self.missing if expected_missing(k)]
        bad = [k for k in self.missing if not expected_missing(k)]
        lines = [f"matched: {len(self.matched)} tensors"]
        for title, keys in (
            ("shape mismatches", self.mismatched),
            ("missing (the model has them, the file does not)", bad),
            ("unexpected (the file has them, the model does not)", self.unexpected),
        ):
            lines.append(f"{title}: {len(keys)}")
            lines += [f"    {k}" for k in keys]
        if fine:
            lines.append(f"not in the file, initialised when the model is built: {len(fine)} (e.g. {fine[0]})")
        return "\n".join(lines)

    def ok(self, expected_missing: Callable[[str], bool] = lambda key: False) -> bool:
        return not self.mismatched and not self.unexpected and all(expected_missing(k) for k in self.missing)

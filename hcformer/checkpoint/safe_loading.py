"""Reading checkpoint files without letting them run code.

Unpickling a file can call any Python function the file names, so a downloaded checkpoint is
as trusted as a downloaded script. hcformer therefore reads files in two ways only:

- ``.pth`` (and every other suffix) with ``torch.load(weights_only=True)``, which rebuilds
  tensors, numbers, strings and containers and refuses everything else;
- ``.pkl`` (detectron2 / Mask2Former model-zoo files) and ``.pth`` files holding arbitrary
  pickled objects with plain ``pickle`` -- only when the caller asks for it explicitly:
  ``MODEL.ALLOW_PICKLE True`` in the config, ``HCFORMER_ALLOW_PICKLE=1`` in the environment,
  or one of the converters in ``tools/`` (run once on a file you trust; write a ``.pth``).
"""
import os
import pickle
from typing import Any

import torch

__all__ = [
    "ALLOW_PICKLE_ENV",
    "CheckpointFileError",
    "PickleNotAllowedError",
    "pickle_allowed",
    "load_checkpoint_file",
]

ALLOW_PICKLE_ENV = "HCFORMER_ALLOW_PICKLE"

_HOW_TO_ALLOW = (
    "Pickles can run arbitrary code, so hcformer reads them only when told to. If you trust "
    "the file, either convert it once to a weights-only .pth with "
    "tools/convert-torchvision-to-d2.py (ResNet) or tools/convert-pretrained-swin-model-to-d2.py "
    "(Swin), giving an output name ending in .pth, or allow pickles for this run with "
    f"MODEL.ALLOW_PICKLE True (or the environment variable {ALLOW_PICKLE_ENV}=1)."
)


class CheckpointFileError(ValueError):
    """The file is not a readable checkpoint (truncated, corrupt, or something else entirely)."""


class PickleNotAllowedError(CheckpointFileError):
    """The file can only be read by unpickling arbitrary objects, which was not allowed."""


def pickle_allowed(flag: bool = False) -> bool:
    """Whether unpickling is allowed: ``flag`` (MODEL.ALLOW_PICKLE) or HCFORMER_ALLOW_PICKLE=1."""
    return bool(flag) or os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def _describe(path: str) -> str:
    return f"{path} ({os.path.getsize(path)} bytes)"


def _looks_like_torch_save(path: str) -> bool:
    """torch.save writes a zip archive (or, before PyTorch 1.6, starts with a pickle protocol
    marker); anything else cannot be a checkpoint, whatever unpickling would say about it."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
    """The object stored in the local file ``path``.

    Args:
        allow_pickle: read ``.pkl`` files and ``.pth`` files holding arbitrary Python objects
            with pickle (see the module docstring); the environment variable counts too.

    Raises:
        FileNotFoundError: no such file.
        PickleNotAllowedError: the file needs unpickling and that was not allowed.
        CheckpointFileError: the file is truncated, corrupt or not a checkpoint at all.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    allowed = pickle_allowed(allow_pickle)
    if path.endswith(".pkl"):
        if not allowed:
            raise PickleNotAllowedError(f"{path} is a pickle (.pkl). {_HOW_TO_ALLOW}")
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except Exception as e:  # noqa: BLE001  whatever failed, the file is not usable
            raise CheckpointFileError(
                f"{_describe(path)} could not be unpickled ({type(e).__name__}: {e}); is it "
                "truncated, or not a checkpoint?"
            ) from None
    if not _looks_like_torch_save(path):
        raise CheckpointFileError(
            f"{_describe(path)} is not a PyTorch checkpoint: torch.save files are zip archives "
            "(or start with a pickle header); is it a text file, an image, an HTML error page?"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointFileError(
                f"{_describe(path)} is not a PyTorch checkpoint ({e})"
            ) from None
        if not allowed:
            raise PickleNotAllowedError(
                f"{path} holds pickled Python objects besides tensors, which "
                f"torch.load(weights_only=True) refuses. {_HOW_TO_ALLOW}"
            ) from None
    except Exception as e:  # noqa: BLE001  torch raises RuntimeError / KeyError / EOFError ...
        raise CheckpointFileError(
            f"{_describe(path)} is not a readable PyTorch checkpoint: it may be truncated (an "
            f"interrupted copy or save) or another kind of file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    try:  # explicitly allowed: a full pickle of Python objects
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointFileError(
            f"{_describe(path)} could not be unpickled ({type(e).__name__}: {e})"
        ) from None

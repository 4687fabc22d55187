"""The random streams a resumed run has to continue for it to equal an uninterrupted run.

A training step draws from torch's generators (point sampling of the losses, dropout), and
the data pipeline of a ``DATALOADER.NUM_WORKERS 0`` run from numpy's and Python's (random
flips and crops of the augmentations). detectron2 seeds them once, at start: a resumed run
would draw from the start of every stream again. Checkpoints therefore carry the state of
each, as tensors and plain Python values so that ``torch.load(weights_only=True)`` reads them.

Workers (``NUM_WORKERS > 0``) are seeded afresh by detectron2 whenever a loader starts, so
their augmentations are not continued; neither are the streams of ranks other than 0 (only
rank 0 writes checkpoints).
"""
import random
from typing import Dict

import numpy as np
import torch


def capture_random_state() -> Dict[str, object]:
    """The state of torch's (CPU and CUDA), numpy's and Python's global generators."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def restore_random_state(state: Dict[str, object]) -> None:
    """Continue every stream of :func:`capture_random_state` where it was captured."""
    torch.set_rng_state(state["torch"])
    cuda_states = state["torch_cuda"]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))

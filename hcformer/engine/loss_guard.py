"""Stop training at the first non-finite loss, before the diverged model can be saved.

detectron2 notices a NaN loss only after the backward pass, and its checkpoint hook then still
writes ``model_final.pth`` when the failure happens in the last iteration. The guard checks the
loss dict the model returns, before backward: it turns the trainer's checkpointer off (a model
whose loss is NaN or inf may already have non-finite weights, which no checkpoint should
hold) and raises a ``NonFiniteLossError`` naming the iteration and the offending loss terms.
The last periodic checkpoint and ``last_checkpoint`` stay as they were, so ``--resume`` starts
again from the last good state.
"""
import math
from typing import Callable, Dict, Mapping

import torch
from torch import nn

__all__ = ["NonFiniteLossError", "non_finite_terms", "install_loss_guard"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training."""


def non_finite_terms(losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """The loss terms whose value is NaN or ±inf, with that value."""
    values = {name: float(value.detach().float().sum()) for name, value in losses.items()}
    return {name: value for name, value in values.items() if not math.isfinite(value)}


def install_loss_guard(model: nn.Module, trainer) -> Callable[[], None]:
    """Check every training forward of ``model`` (the module that returns the loss dict, not a
    DistributedDataParallel wrapper) for non-finite losses; ``trainer`` gives the iteration
    (``trainer.iter``) and the checkpointer to disable (``trainer.checkpointer``).

    Returns:
        a function that removes the guard.
    """

    def check(module: nn.Module, inputs, outputs) -> None:
        if not module.training or not isinstance(outputs, Mapping):
            return  # inference returns predictions, not losses
        bad = non_finite_terms(outputs)
        if not bad:
            return
        trainer.checkpointer.save_to_disk = False
        finite = sorted(name for name in outputs if name not in bad)
        bad_terms = ", ".join(f"{name}={value}" for name, value in sorted(bad.items()))
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {trainer.iter}: {bad_terms} "
            f"(finite: {', '.join(finite) if finite else 'none'}). Training stopped and no "
            "checkpoint of this state was written; the last checkpoint in OUTPUT_DIR is "
            "intact, and --resume continues from it. Usual causes: a learning rate too high "
            "(SOLVER.BASE_LR), no gradient clipping (SOLVER.CLIP_GRADIENTS), fp16 overflow "
            "(SOLVER.AMP.ENABLED), or a bad training sample."
        )

    handle = model.register_forward_hook(check)
    return handle.remove

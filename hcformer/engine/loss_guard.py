"""Stop training at the first non-finite loss, before the diverged model can be saved.

detectron2 notices a NaN loss only after the backward pass, and its checkpoint hook then still
writes ``model_final.pth`` when the failure happens in the last iteration. The guard checks the
loss dict the model returns, before backward: it turns the trainer's checkpointer off (a model
whose loss is NaN or inf may already have non-finite weights, which no checkpoint should
hold) and raises a ``NonFiniteLossError`` naming the iteration and the offending loss terms.
The last periodic checkpoint and ``last_checkpoint`` stay as they were, so ``--resume`` starts
again from the last good state.

With several processes the decision is collective: a NaN on one rank alone would otherwise stop
that rank while the others wait for it in the gradient all-reduce (until the 30-minute timeout
of the process group), and rank 0, which writes the checkpoints, would not know. Every rank
adds its flag to one all-reduce per iteration; when some rank's loss is not finite, all ranks
learn which ranks and terms, and all raise the same error.
"""
import math
from typing import Callable, Dict, List, Mapping

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import nn

__all__ = ["NonFiniteLossError", "non_finite_terms", "install_loss_guard"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training."""


def non_finite_terms(losses: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """The loss terms whose value is NaN or ±inf, with that value."""
    values = {name: float(value.detach().float().sum()) for name, value in losses.items()}
    return {name: value for name, value in values.items() if not math.isfinite(value)}


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process (one all-reduce; every rank must call it)."""
    # a tensor on the loss's device: NCCL reduces CUDA tensors only
    total = torch.tensor([float(flag)], device=device)
    dist.all_reduce(total)
    return bool(total.item() > 0)


def _describe(bad: Mapping[str, float], finite: List[str]) -> str:
    terms = ", ".join(f"{name}={value}" for name, value in sorted(bad.items()))
    return f"{terms} (finite: {', '.join(finite) if finite else 'none'})"


def install_loss_guard(model: nn.Module, trainer) -> Callable[[], None]:
    """Check every training forward of ``model`` (the module that returns the loss dict, not a
    DistributedDataParallel wrapper) for non-finite losses; ``trainer`` gives the iteration
    (``trainer.iter``) and the checkpointer to disable (``trainer.checkpointer``).

    With several processes every rank must run each training forward, as with the
    DistributedDataParallel wrapper itself: the check takes part in a collective.

    Returns:
        a function that removes the guard.
    """

    def check(module: nn.Module, inputs, outputs) -> None:
        if not module.training or not isinstance(outputs, Mapping) or not outputs:
            return  # inference returns predictions, not losses
        bad = non_finite_terms(outputs)
        distributed = comm.get_world_size() > 1
        if distributed:
            if not _any_rank(bool(bad), next(iter(outputs.values())).device):
                return
        elif not bad:
            return
        trainer.checkpointer.save_to_disk = False
        finite = sorted(name for name in outputs if name not in bad)
        if distributed:
            # only now, when all ranks stop anyway: which ranks, which terms
            reports = comm.all_gather((comm.get_rank(), bad, finite))
            where = "; ".join(f"on rank {rank}: {_describe(b, f)}" for rank, b, f in reports if b)
        else:
            where = _describe(bad, finite)
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {trainer.iter}{' ' if distributed else ': '}{where}. "
            "Training stopped and no checkpoint of this state was written; the last checkpoint "
            "in OUTPUT_DIR is intact, and --resume continues from it. Usual causes: a learning "
            "rate too high (SOLVER.BASE_LR), no gradient clipping (SOLVER.CLIP_GRADIENTS), fp16 "
            "overflow (SOLVER.AMP.ENABLED), or a bad training sample."
        )

    handle = model.register_forward_hook(check)
    return handle.remove

"""Stop training at the first non-finite loss, before the diverged model can be saved.

detectron2 notices a NaN loss only after the backward pass, and its checkpoint hook then still
writes ``model_final.pth`` when the failure happens in the last iteration. HCFormer checks the
loss dict it returns, before backward (:func:`check_finite_losses`), and raises a
``NonFiniteLossError`` naming the offending terms; ``Trainer.run_step`` then turns its
checkpointer off (a model whose loss is NaN or inf may already have non-finite weights, which
no checkpoint should hold) and raises it again with the iteration (:func:`stopped_at`). Models
without the check (a project's detectron2 meta-architecture) stop at detectron2's own
FloatingPointError, after backward but before the optimizer step; the checkpointer is turned
off for those too.
The last periodic checkpoint and ``last_checkpoint`` stay as they were, so ``--resume`` starts
again from the last good state.

With several processes the decision is collective: a NaN on one rank alone would otherwise stop
that rank while the others wait for it in the gradient all-reduce (until the 30-minute timeout
of the process group), and rank 0, which writes the checkpoints, would not know. Every rank
adds its flag to one all-reduce per iteration; when some rank's loss is not finite, all ranks
learn which ranks and terms, and all raise the same error.
"""
import math
from typing import Dict, List, Mapping

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["NonFiniteLossError", "non_finite_terms", "check_finite_losses"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training; ``where`` names the terms."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


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


def check_finite_losses(losses: Mapping[str, torch.Tensor]) -> None:
    """Raise a :class:`NonFiniteLossError` if a term of ``losses`` is NaN or infinite — on this
    process or, with several, on any (every rank must call it once per training forward: it is
    a collective). The error's ``where`` names the terms (and ranks); the trainer adds the
    iteration and turns its checkpointer off (``Trainer.run_step``)."""
    bad = non_finite_terms(losses)
    distributed = comm.get_world_size() > 1
    if distributed:
        if not _any_rank(bool(bad), next(iter(losses.values())).device):
            return
    elif not bad:
        return
    finite = sorted(name for name in losses if name not in bad)
    if distributed:
        # only now, when all ranks stop anyway: which ranks, which terms
        reports = comm.all_gather((comm.get_rank(), bad, finite))
        where = "; ".join(f"on rank {rank}: {_describe(b, f)}" for rank, b, f in reports if b)
    else:
        where = _describe(bad, finite)
    raise NonFiniteLossError(where)


def stopped_at(iteration: int, error: NonFiniteLossError) -> NonFiniteLossError:
    """The error the trainer raises: ``error``'s terms, the iteration and what to do."""
    separator = " " if error.where.startswith("on rank") else ": "
    return NonFiniteLossError(
        f"Non-finite loss at iteration {iteration}{separator}{error.where}. "
        "Training stopped and no checkpoint of this state was written; the last checkpoint "
        "in OUTPUT_DIR is intact, and --resume continues from it. Usual causes: a learning "
        "rate too high (SOLVER.BASE_LR), no gradient clipping (SOLVER.CLIP_GRADIENTS), fp16 "
        "overflow (SOLVER.AMP.ENABLED), or a bad training sample."
    )

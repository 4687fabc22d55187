"""LR schedules: detectron2's, plus "WarmupPolyLR" used by the semantic-segmentation configs."""
from detectron2.config import CfgNode
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler
from fvcore.common.param_scheduler import ParamScheduler, PolynomialDecayParamScheduler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class _AtLeast(ParamScheduler):
    """``scheduler``, but never below ``floor`` (the constant ending of the poly schedule)."""

    def __init__(self, scheduler: ParamScheduler, floor: float):
        self._scheduler = scheduler
        self._floor = floor

    def __call__(self, where: float) -> float:
        return max(self._scheduler(where), self._floor)


def poly_param_scheduler(power: float, constant_ending: float = 0.0) -> ParamScheduler:
    """LR multiplier ``max((1 - t / T) ** power, constant_ending)`` at relative time t / T."""
    scheduler = PolynomialDecayParamScheduler(base_value=1.0, power=power)
    return _AtLeast(scheduler, constant_ending) if constant_ending > 0 else scheduler


def build_lr_scheduler(cfg: CfgNode, optimizer: Optimizer) -> LRScheduler:
    """The scheduler named by SOLVER.LR_SCHEDULER_NAME: "WarmupPolyLR" here, others (e.g.
    "WarmupMultiStepLR", "WarmupCosineLR") from detectron2."""
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_detectron2_lr_scheduler(cfg, optimizer)

    scheduler = WarmupParamScheduler(
        poly_param_scheduler(solver.POLY_LR_POWER, solver.POLY_LR_CONSTANT_ENDING),
        warmup_factor=solver.WARMUP_FACTOR,
        warmup_length=min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        warmup_method=solver.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=scheduler, max_iter=solver.MAX_ITER)

"""Optimizer and learning-rate schedules of HCFormer (Mask2Former's recipe)."""
from .build_optimizer import build_optimizer, get_param_groups
from .lr_scheduler import build_lr_scheduler, poly_param_scheduler

__all__ = ["build_optimizer", "get_param_groups", "build_lr_scheduler", "poly_param_scheduler"]

"""Config setup and trainer of the PaCa project: HCFormer's, plus MODEL.PACA.* and PaCa's loader."""
import logging

import torch
from detectron2.config import CfgNode, get_cfg
from torch import nn

from hcformer.config import add_hcformer_config
from hcformer.engine.trainer import Trainer

from .checkpoint import PaCaCheckpointer

logger = logging.getLogger(__name__)


def get_paca_cfg() -> CfgNode:
    """detectron2's defaults + HCFormer's keys + MODEL.PACA.* (registered by importing paca)."""
    cfg = get_cfg()
    add_hcformer_config(cfg)
    return cfg


def is_cluster_projection(name: str) -> bool:
    """The clustering's last layer (C → M): re-initialised when M changes."""
    return name.endswith("to_clusters.weight") and name.startswith("backbone.")


def scale_cluster_projection_lr(optimizer: torch.optim.Optimizer, model: nn.Module, multiplier: float) -> int:
    """Move the backbone's cluster projections into their own parameter groups with
    ``multiplier`` × their LR (MODEL.PACA.CLUSTERING_LR_MULTIPLIER); returns how many moved.

    Done on the built optimizer (before any step or LR scheduler) so that HCFormer's grouping
    of LR and weight decay stays the single source of both.
    """
    if multiplier == 1.0:
        return 0
    targets = {id(p) for n, p in model.named_parameters() if is_cluster_projection(n) and p.requires_grad}
    moved = 0
    for group in list(optimizer.param_groups):
        chosen = [p for p in group["params"] if id(p) in targets]
        if not chosen:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in targets]
        optimizer.add_param_group({**group, "params": chosen, "lr": group["lr"] * multiplier})
        moved += len(chosen)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return moved


class PaCaTrainer(Trainer):
    """HCFormer's trainer with ``PaCaCheckpointer`` (M changes, classifier weights) and the
    clustering LR multiplier."""

    checkpointer_class = PaCaCheckpointer

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(cfg, model)
        moved = scale_cluster_projection_lr(optimizer, model, cfg.MODEL.PACA.CLUSTERING_LR_MULTIPLIER)
        if moved:
            logger.info(f"{moved} cluster projections train at {cfg.MODEL.PACA.CLUSTERING_LR_MULTIPLIER}x the backbone LR")
        return optimizer

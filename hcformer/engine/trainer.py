"""The detectron2 trainer of HCFormer, shared by train_net.py and the tools."""
import logging
import os
import weakref
from collections import OrderedDict
from importlib.util import find_spec
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)
from torch import nn

from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.data.build import build_dataset_mapper
from hcformer.evaluation.build_evaluator import build_evaluator
from hcformer.evaluation.hierarchy_evaluator import HierarchyEvaluator
from hcformer.solver import build_lr_scheduler, build_optimizer

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with HCFormer's training mappers, evaluators, optimizer,
    LR schedules and checkpointer (local files only, ImageNet ResNets converted on load).
    Test loaders are detectron2's default (``DatasetMapper(cfg, False)``)."""

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None):
        """detectron2's test loop; with TEST.HIERARCHY_EVAL, the undersegmentation error and
        achievable segmentation accuracy of every hierarchy level are reported too."""
        if evaluators is None and cfg.TEST.HIERARCHY_EVAL:
            evaluators = [
                DatasetEvaluators([
                    cls.build_evaluator(cfg, name),
                    HierarchyEvaluator(name, model, os.path.join(cfg.OUTPUT_DIR, "inference")),
                ])
                for name in cfg.DATASETS.TEST
            ]
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    def build_writers(self) -> List[EventWriter]:
        """Progress with ETA on the console and metrics.json; TensorBoard events only where
        tensorboard is installed (TensorboardXWriter imports it when built)."""
        writers = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        if find_spec("tensorboard") is not None:
            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        return writers

    def build_hooks(self) -> List[HookBase]:
        # DefaultTrainer.__init__ creates a plain DetectionCheckpointer just before calling
        # build_hooks(): replace it first, so that loading (resume_or_load) and the periodic
        # checkpoint hook both use ours.
        self.checkpointer = HCFormerCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: nn.Module) -> Dict[str, Dict[str, float]]:
        """Semantic segmentation with multi-scale + flip test-time augmentation (TEST.AUG)."""
        # Imported here: only semantic runs with TEST.AUG.ENABLED need it.
        from hcformer.modeling.test_time_augmentation import SemanticSegmentorWithTTA

        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((name + "_TTA", value) for name, value in results.items())

"""The detectron2 trainer of HCFormer, shared by train_net.py and the tools."""
import logging
import os
import weakref
from collections import OrderedDict
from importlib.util import find_spec
from typing import Dict, List, Optional, Type

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)
from torch import nn

from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.data.build import build_dataset_mapper, build_train_loader
from hcformer.data.dataset_loading import load_dataset_dicts
from hcformer.evaluation.build_evaluator import build_evaluator
from hcformer.evaluation.hierarchy_evaluator import HierarchyEvaluator
from hcformer.solver import build_lr_scheduler, build_optimizer

from .loss_guard import NonFiniteLossError, stopped_at
from .random_state import capture_random_state, restore_random_state

logger = logging.getLogger(__name__)


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """The name of the torch.optim class of ``optimizer``: "AdamW" or "SGD" also when
    gradient clipping wraps it in a subclass."""
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim"):
            return cls.__name__
    return type(optimizer).__name__


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with HCFormer's training mappers, evaluators, optimizer,
    LR schedules and checkpointer (local files only, no pickles unless MODEL.ALLOW_PICKLE,
    ImageNet backbones converted on load). Test loaders use ``EvaluationDatasetMapper``
    (detectron2's default resizing, strict reading).

    Reliability on top of detectron2's:

    - a non-finite loss stops training before backward, naming the iteration and the loss
      terms, and no checkpoint of that state is written (``loss_guard``); with several
      processes all of them stop, whichever rank diverged;
    - dataset files that do not parse name the dataset and file (``load_dataset_dicts``);
    - several CPU processes (gloo, ``hcformer.engine.launch``) train with a CPU
      DistributedDataParallel;
    - checkpoints hold the optimizer and AMP grad-scaler state and the random streams, and a
      resumed run reads on in the data stream, so ``--resume`` continues exactly (detectron2
      v0.6 saves only the iteration and the LR scheduler, and restarts the data and random
      streams); the state of another kind of optimizer than SOLVER.OPTIMIZER is refused;
    - MODEL.WEIGHTS_IGNORE names tensors of MODEL.WEIGHTS not to load (fine-tuning with
      another head); any other mismatch of a whole-model checkpoint is refused.
    """

    # loads and saves in training and in --eval-only; a project sets its own (PaCa)
    checkpointer_class: Type[HCFormerCheckpointer] = HCFormerCheckpointer

    def __init__(self, cfg: CfgNode):
        """DefaultTrainer's construction, in its order, with two differences: a CPU model is
        wrapped for several processes with ``device_ids=None`` (detectron2's ``create_ddp_model``
        passes the local rank as a CUDA device, which DistributedDataParallel refuses for a CPU
        model), and the checkpointer is ``checkpointer_class``."""
        TrainerBase.__init__(self)  # not DefaultTrainer's, which wraps the model as said above
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            # train_net's setup() makes it; a Trainer built directly needs it for its writers
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {}))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.checkpointer_class(
            model,
            cfg.OUTPUT_DIR,
            allow_pickle=cfg.MODEL.ALLOW_PICKLE,
            ignore_prefixes=cfg.MODEL.WEIGHTS_IGNORE,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def run_step(self) -> None:
        """detectron2's step; a non-finite loss turns the checkpointer off before the error
        leaves the step (``loss_guard``), so that no hook saves the diverged state."""
        try:
            super().run_step()
        except NonFiniteLossError as error:
            self.checkpointer.save_to_disk = False
            raise stopped_at(self.iter, error) from None
        except FloatingPointError:  # detectron2's own check, for models without ours
            self.checkpointer.save_to_disk = False
            raise

    def state_dict(self) -> Dict:
        # detectron2 v0.6's DefaultTrainer saves only the iteration and the hooks (LR
        # scheduler): without the optimizer (Adam moments, step counts) and the AMP grad scaler,
        # --resume would continue with a reset optimizer. Later detectron2 versions store them
        # under the same key.
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        # what --resume compares with SOLVER.OPTIMIZER: another optimizer's state would load
        # silently and fail at the first step (SGD reading "momentum" from AdamW's groups)
        state["optimizer_type"] = _optimizer_kind(self.optimizer)
        # the random streams (point sampling, augmentations): a resumed run continues them and
        # ends with the weights of the uninterrupted run (tests/test_training_recovery.py)
        state["random_state"] = capture_random_state()
        point_generator = self._point_generator()
        if point_generator is not None:
            state["point_sampling_state"] = point_generator.get_state()
        return state

    def _point_generator(self) -> Optional[torch.Generator]:
        """The criterion's stream of point-sampling seeds (with a fixed SEED), the same on every
        process (``SetCriterion.point_generator``)."""
        criterion = getattr(getattr(self.model, "module", self.model), "criterion", None)
        return getattr(criterion, "point_generator", None)

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        trainer_state = state.get("_trainer")
        if trainer_state is None:
            logger.warning("The checkpoint holds no optimizer state: the optimizer starts afresh")
            return
        self._check_optimizer_kind(state.get("optimizer_type"), trainer_state.get("optimizer"))
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None and not trainer_state.get("grad_scaler"):
            # a run saved without SOLVER.AMP.ENABLED, resumed with it: AMPTrainer would fail
            # with a KeyError; load the optimizer and keep the new scaler instead
            logger.warning("The checkpoint holds no AMP grad-scaler state: the scaler starts afresh")
            trainer_state = {**trainer_state, "grad_scaler": scaler.state_dict()}
        self._trainer.load_state_dict(trainer_state)
        if "random_state" in state and comm.get_rank() == 0:  # the streams of rank 0 (the one that saves)
            restore_random_state(state["random_state"])
        point_generator = self._point_generator()
        if point_generator is not None and "point_sampling_state" in state:  # every process: one stream
            point_generator.set_state(state["point_sampling_state"])

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's, and a resumed run reads on in its sampler's stream where the
        checkpointed run stopped, instead of reading the first images again."""
        super().resume_or_load(resume=resume)
        images_per_process = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        self._trainer.data_loader.resumable_sampler.start = self.start_iter * images_per_process

    def _check_optimizer_kind(self, saved_kind: Optional[str], saved: Optional[Dict]) -> None:
        """Refuse the state of another kind of optimizer than SOLVER.OPTIMIZER builds.

        The class name is in the checkpoint since it was recorded; older checkpoints are told
        apart by their hyperparameters: each optimizer has some the other lacks (AdamW "betas",
        SGD "momentum"), whereas another PyTorch version only adds new ones.
        """
        kind = _optimizer_kind(self.optimizer)
        if saved_kind is not None:
            if saved_kind == kind:
                return
            saved_description = saved_kind
        else:
            if not saved or not saved.get("param_groups") or not self.optimizer.param_groups:
                return
            saved_keys = set(saved["param_groups"][0]) - {"params"}
            keys = set(self.optimizer.param_groups[0]) - {"params"}
            if not (saved_keys - keys and keys - saved_keys):
                return
            saved_description = (
                f"another kind of optimizer (with {', '.join(sorted(saved_keys - keys))}; "
                f"without {', '.join(sorted(keys - saved_keys))})"
            )
        path = getattr(self.checkpointer, "loading", "") or "the checkpoint"
        raise ValueError(
            f"--resume: {path} holds the state of {saved_description}, but this run's "
            f"optimizer is {kind} (SOLVER.OPTIMIZER {self.cfg.SOLVER.OPTIMIZER}). A resumed run "
            "continues with its own optimizer: resume with the SOLVER.OPTIMIZER it was trained "
            "with, or start a new run with another OUTPUT_DIR (or without --resume) and "
            f"MODEL.WEIGHTS {path} to train its weights with {kind}."
        )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            load_dataset_dicts([dataset_name]),
            mapper=build_dataset_mapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

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

    def train(self) -> Optional[Dict[str, Dict[str, float]]]:
        """detectron2's, returning the results of the evaluation after the last iteration.

        detectron2 v0.6 returns them only with TEST.EXPECTED_RESULTS set (its docstring promises
        them whenever evaluation is enabled); without them, a caller wanting the numbers had to
        evaluate the trained model a second time.
        """
        results = super().train()
        return results if results is not None else getattr(self, "_last_eval_results", None)

    def after_train(self) -> None:
        """detectron2's, except that only a completed training is evaluated.

        detectron2's EvalHook evaluates after training when ``iter + 1 >= max_iter``, which
        also holds when the last iteration raised or was interrupted (a completed run ends with
        ``iter == max_iter``): a model stopped halfway through its optimizer step would be
        evaluated, and a SIGTERM at the last iteration would wait for a whole evaluation.
        """
        if self.iter >= self.max_iter:
            super().after_train()
            return
        self.storage.iter = self.iter
        for hook in self._hooks:
            if not isinstance(hook, hooks.EvalHook):
                hook.after_train()

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

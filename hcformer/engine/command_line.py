"""What every ``train_net.py`` (the repository's and the projects') runs: train or evaluate."""
import argparse
import logging
from typing import Optional, Sequence, Type

from detectron2.engine import default_argument_parser, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from hcformer.checkpoint import last_complete_checkpoint

from .interruption import TrainingInterrupted, stop_on_signals
from .launch import launch
from .setup import setup
from .trainer import Trainer

logger = logging.getLogger(__name__)


def main(args: argparse.Namespace, trainer_class: Type[Trainer] = Trainer):
    """Train (``--resume`` continues from OUTPUT_DIR/last_checkpoint) or, with ``--eval-only``,
    evaluate MODEL.WEIGHTS (``--resume``: the last checkpoint of OUTPUT_DIR) in a directory of
    its own, ``OUTPUT_DIR/eval_<checkpoint>``; semantic test-time augmentation when
    TEST.AUG.ENABLED.

    A training stopped by SIGTERM or SIGINT logs the signal and the last complete checkpoint
    and exits with status 128 + the signal number (``SystemExit``).
    """
    cfg = setup(args)  # with --eval-only: OUTPUT_DIR and MODEL.WEIGHTS are the evaluation's

    if args.eval_only:
        model = trainer_class.build_model(cfg)
        if not cfg.MODEL.WEIGHTS:
            # the scores of a random model look like those of a badly trained one
            logger.warning(
                "MODEL.WEIGHTS is empty: the model is randomly initialised, and --eval-only "
                "evaluates it as it is. Set MODEL.WEIGHTS to a trained checkpoint, or add --resume "
                "to evaluate the last checkpoint of OUTPUT_DIR."
            )
        # a checkpointer without a directory: it only loads (refusing a URL: weights are never
        # downloaded), and neither saves nor removes the temporary files of a training
        trainer_class.checkpointer_class(model, allow_pickle=cfg.MODEL.ALLOW_PICKLE).load(cfg.MODEL.WEIGHTS)
        results = trainer_class.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(trainer_class.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = None
    try:
        with stop_on_signals():
            trainer = trainer_class(cfg)
            trainer.resume_or_load(resume=args.resume)
            if cfg.TEST.AUG.ENABLED:
                # evaluated once, after training (period 0)
                trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
            return trainer.train()
    except TrainingInterrupted as stop:
        last = last_complete_checkpoint(cfg.OUTPUT_DIR)
        where = f" at iteration {trainer.iter}" if trainer is not None else ""
        logger.warning(
            f"{stop.signal_name} received{where}: training stopped. Last complete checkpoint: "
            + (f"{last}; --resume continues from it." if last else "none yet.")
        )
        raise SystemExit(stop.exit_code) from None


def run(argv: Optional[Sequence[str]] = None, trainer_class: Type[Trainer] = Trainer):
    """Parse detectron2's command line and launch ``main`` on every process."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, trainer_class),
    )

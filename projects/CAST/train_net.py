#!/usr/bin/env python
"""Train or evaluate HCFormer with a CAST backbone: HCFormer's train_net plus MODEL.CAST.*.

    python projects/CAST/train_net.py --config-file projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml
    python projects/CAST/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS model_final.pth
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the cast package

from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, hooks, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import cast  # noqa: E402  registers D2HCCAST, CASTFormerHead, CASTTransformerDecoder
import hcformer  # noqa: E402,F401  registers the models, datasets and mappers
from hcformer.checkpoint import HCFormerCheckpointer  # noqa: E402
from hcformer.config import add_hcformer_config  # noqa: E402
from hcformer.engine.setup import adapt_to_machine  # noqa: E402
from hcformer.engine.trainer import Trainer  # noqa: E402

logger = logging.getLogger("hcformer.cast")


def setup(args: argparse.Namespace) -> CfgNode:
    """The config of ``args``: HCFormer's keys and MODEL.CAST.* added before the file is merged."""
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cast.add_cast_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    notes = adapt_to_machine(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hcformer")
    for note in notes:
        logger.warning(note)
    return cfg


def main(args: argparse.Namespace):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        HCFormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

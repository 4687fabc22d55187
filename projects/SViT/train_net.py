#!/usr/bin/env python
"""Train or evaluate HCFormer with an SViT backbone: HCFormer's train_net with MODEL.SVIT.*.

    python projects/SViT/train_net.py --config-file projects/SViT/configs/shapes/hcformer_svit_tiny_shapes.yaml
    python projects/SViT/train_net.py --num-gpus 8 \\
        --config-file projects/SViT/configs/coco/panoptic-segmentation/hcformer_svit_small_bs16_50ep.yaml \\
        MODEL.WEIGHTS /path/to/svit_small.pkl
    python projects/SViT/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS model_final.pth
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the svit package

from detectron2.config import CfgNode  # noqa: E402
from detectron2.engine import default_argument_parser, hooks, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import hcformer  # noqa: E402,F401  registers the models, datasets and mappers
import svit  # noqa: E402  registers D2SViT and D2HCSViT
from hcformer.checkpoint import HCFormerCheckpointer  # noqa: E402
from hcformer.engine.setup import setup as hcformer_setup  # noqa: E402
from hcformer.engine.trainer import Trainer  # noqa: E402

logger = logging.getLogger("hcformer.svit")


def setup(args: argparse.Namespace) -> CfgNode:
    """``hcformer.engine.setup`` with the MODEL.SVIT.* keys added before the file is merged."""
    return hcformer_setup(args, extra_config=[svit.add_svit_config])


def main(args: argparse.Namespace):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        HCFormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
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
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

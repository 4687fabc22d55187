#!/usr/bin/env python
"""Train or evaluate HCFormer.

    python train_net.py --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml
    python train_net.py --config-file <config> --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python train_net.py --config-file <config> --num-gpus 8 [--resume] [KEY VALUE ...]

Without CUDA, ``--num-gpus N`` starts N CPU processes (gloo backend, hcformer.engine.launch).
``--resume`` continues from OUTPUT_DIR/last_checkpoint: iteration, optimizer, LR schedule.
"""
from detectron2.engine import default_argument_parser, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import hcformer  # noqa: F401  registers the models, datasets and mappers
from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.engine.launch import launch
from hcformer.engine.setup import setup
from hcformer.engine.trainer import Trainer


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        # refuses a URL for MODEL.WEIGHTS: weights are never downloaded
        checkpointer = HCFormerCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_pickle=cfg.MODEL.ALLOW_PICKLE
        )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        # evaluated once, after training (period 0)
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
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

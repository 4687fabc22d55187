#!/usr/bin/env python
"""Train or evaluate the PaCa project's models (HCFormer on HC-PaCa, or PaCa's own head).

    python projects/PaCa/train_net.py --config-file projects/PaCa/configs/shapes/paca_head_paca_tiny_shapes.yaml
    python projects/PaCa/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python projects/PaCa/train_net.py --config-file <config> --num-gpus 8 [--resume] [KEY VALUE ...]
"""
import os
import sys

from detectron2.engine import default_argument_parser, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

# `import paca` from any working directory: the package sits next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hcformer  # noqa: E402,F401  registers HCFormer, its datasets and mappers
import paca  # noqa: E402,F401  registers D2PaCa, D2HCPaCa, PaCaSegHead
from paca.checkpoint import PaCaCheckpointer  # noqa: E402
from paca.engine import PaCaTrainer, setup  # noqa: E402  (setup calls add_paca_config)


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = PaCaTrainer.build_model(cfg)
        PaCaCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = PaCaTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(PaCaTrainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = PaCaTrainer(cfg)
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

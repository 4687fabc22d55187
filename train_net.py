#!/usr/bin/env python
"""Train or evaluate HCFormer.

    python train_net.py --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml
    python train_net.py --config-file <config> --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python train_net.py --config-file <config> --num-gpus 8 [--resume] [KEY VALUE ...]

Without CUDA, ``--num-gpus N`` starts N CPU processes (gloo backend, hcformer.engine.launch).
``--resume`` continues from OUTPUT_DIR/last_checkpoint: iteration, optimizer, LR schedule.
"""
import hcformer  # noqa: F401  registers the models, datasets and mappers
from hcformer.engine.command_line import run

if __name__ == "__main__":
    run()

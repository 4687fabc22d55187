#!/usr/bin/env python
"""Train or evaluate HCFormer with an SViT backbone: HCFormer's train_net with MODEL.SVIT.*.

    python projects/SViT/train_net.py --config-file projects/SViT/configs/shapes/hcformer_svit_tiny_shapes.yaml
    python projects/SViT/train_net.py --num-gpus 8 \\
        --config-file projects/SViT/configs/coco/panoptic-segmentation/hcformer_svit_small_bs16_50ep.yaml \\
        MODEL.WEIGHTS /path/to/svit_small.pkl
    python projects/SViT/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS model_final.pth
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the svit package

import hcformer  # noqa: E402,F401  registers the models, datasets and mappers
import svit  # noqa: E402,F401  registers its backbone and MODEL.SVIT.* keys
from hcformer.engine.command_line import run  # noqa: E402

if __name__ == "__main__":
    run()

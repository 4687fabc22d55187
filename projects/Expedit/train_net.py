#!/usr/bin/env python
"""Evaluate a trained HC-Swin with Expedit's token clustering (no training needed: Expedit is
applied at inference), or fine-tune it: HCFormer's train_net with MODEL.EXPEDIT.*.

    python projects/Expedit/train_net.py --eval-only \
        --config-file projects/Expedit/configs/coco/panoptic-segmentation/hcformer+_swin_large_IN21k_384_bs16_200ep_expedit.yaml \
        MODEL.WEIGHTS /path/to/hcformer+_swin_large.pth
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the expedit package

import expedit  # noqa: E402,F401  registers its backbone and MODEL.EXPEDIT.* keys
import hcformer  # noqa: E402,F401  registers the models, datasets and mappers
from hcformer.engine.command_line import run  # noqa: E402

if __name__ == "__main__":
    run()

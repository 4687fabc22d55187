#!/usr/bin/env python
"""Train or evaluate the PaCa project's models (HCFormer on HC-PaCa, or PaCa's own head).

    python projects/PaCa/train_net.py --config-file projects/PaCa/configs/shapes/paca_head_paca_tiny_shapes.yaml
    python projects/PaCa/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python projects/PaCa/train_net.py --config-file <config> --num-gpus 8 [--resume] [KEY VALUE ...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the paca package

import hcformer  # noqa: E402,F401  registers HCFormer, its datasets and mappers
from hcformer.engine.command_line import run  # noqa: E402
from paca.engine import PaCaTrainer  # noqa: E402  (importing paca registers its models and keys)

if __name__ == "__main__":
    run(trainer_class=PaCaTrainer)

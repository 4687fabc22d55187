#!/usr/bin/env python
"""Train or evaluate HCFormer with a CAST backbone: HCFormer's train_net plus MODEL.CAST.*.

    python projects/CAST/train_net.py --config-file projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml
    python projects/CAST/train_net.py --config-file <config> --eval-only MODEL.WEIGHTS model_final.pth
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the cast package

import hcformer  # noqa: E402,F401  registers the models, datasets and mappers
import cast  # noqa: E402,F401  registers its backbone and MODEL.CAST.* keys
from hcformer.engine.command_line import run  # noqa: E402

if __name__ == "__main__":
    run()

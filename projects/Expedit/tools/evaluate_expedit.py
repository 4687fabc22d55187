#!/usr/bin/env python
"""PQ / mIoU / AP of a trained HC-Swin config with and without Expedit (same weights).

Builds the model of ``--config-file`` (MODEL.EXPEDIT.* from the file or the overrides),
loads MODEL.WEIGHTS with HCFormer's checkpointer (no download), evaluates DATASETS.TEST with
the project's Trainer once as trained and once expedited, and prints both result dicts.

    python projects/Expedit/tools/evaluate_expedit.py \\
        --config-file projects/Expedit/configs/shapes/hcformer_swinT_shapes_expedit.yaml \\
        MODEL.WEIGHTS output/hcformer_swinT_shapes/model_final.pth
"""
import argparse
import json
import sys
from pathlib import Path

from detectron2.config import get_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the expedit package

import hcformer  # noqa: E402,F401  registers models and datasets
from expedit import add_expedit_config, apply_expedit  # noqa: E402
from hcformer.checkpoint import HCFormerCheckpointer  # noqa: E402
from hcformer.config import add_hcformer_config  # noqa: E402
from hcformer.engine.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    cfg = get_cfg()
    add_hcformer_config(cfg)
    add_expedit_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()

    results = {}
    for name, enabled in (("original", False), ("expedit", True)):
        model = Trainer.build_model(cfg)
        if enabled:
            cfg.defrost()
            cfg.MODEL.EXPEDIT.ENABLED = True
            apply_expedit(model, cfg)
            cfg.freeze()
        HCFormerCheckpointer(model, allow_pickle=cfg.MODEL.ALLOW_PICKLE).load(cfg.MODEL.WEIGHTS)
        model.eval()
        results[name] = Trainer.test(cfg, model)
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the expedit package

from expedit.analysis import build_trained, evaluate, expedited_copy  # noqa: E402
from hcformer.engine.inference_model import inference_cfg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    cfg = inference_cfg(args.config_file, args.opts, freeze=False)

    original = build_trained(cfg)  # MODEL.WEIGHTS loaded once, the expedited model is a copy
    results = {"original": evaluate(cfg, original), "expedit": evaluate(cfg, expedited_copy(original, cfg))}
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Export a config's model to ONNX or TorchScript, to run it without detectron2.

    python tools/export_model.py --config-file configs/coco/panoptic-segmentation/hcformer_R50_bs16_50ep.yaml \\
        --format onnx --output exported/r50 --height 800 --width 1216 MODEL.WEIGHTS model_final.pth
    python tools/export_model.py --config-file <config> --format torchscript --output exported/ts --dynamic \\
        MODEL.WEIGHTS model_final.pth
    python tools/run_exported.py --exported exported/r50 --input photo.jpg --output out/ --save-predictions

Writes ``OUTPUT/model.onnx`` (or ``model.ts``) and ``OUTPUT/export.json``. The graph takes one
RGB image, float32 (1, 3, H, W) with values 0–255, and returns ``pred_logits``, ``pred_masks``
(decoded through the hierarchy) and ``sem_seg`` (see hcformer_deploy/contract.py and the README).
H and W default to INPUT.MIN_SIZE_TEST rounded up to 32; they must be multiples of 32 unless
``--dynamic``, which accepts any size (padding inside the graph). ``--clusterings`` adds the
hard cluster map of every hierarchy level. The exported file is run once on a random image and
compared with the eager model; the largest differences are logged and kept in export.json.

An unsupported format or size, missing weights, or a model part the format cannot express stop
the tool with one ``error:`` line (exit code 2).
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, for hcformer
import hcformer  # noqa: E402,F401  registers the models
from hcformer.engine.export import ExportError, export_model  # noqa: E402
from hcformer.engine.inference_model import inference_cfg  # noqa: E402

logger = logging.getLogger("hcformer.export_model")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--project", metavar="DIR", help="a project to import, e.g. projects/PaCa (default: the config file's)")
    parser.add_argument("--format", required=True, help="onnx or torchscript")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the model file and export.json")
    parser.add_argument("--height", type=int, help="input height (default: INPUT.MIN_SIZE_TEST rounded up to 32)")
    parser.add_argument("--width", type=int, help="input width (default: as the height)")
    parser.add_argument("--dynamic", action="store_true", help="accept any input size (padding inside the graph)")
    parser.add_argument("--clusterings", action="store_true", help="also output the hard cluster map of every level")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger(name="hcformer")
    try:
        # exported graphs are traced on the CPU: a CUDA device would be written into TorchScript
        cfg = inference_cfg(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"], project=args.project)
        export_model(cfg, args.format, args.output, args.height, args.width, args.dynamic, args.clusterings,
                     config_file=args.config_file)
    except (ValueError, FileNotFoundError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

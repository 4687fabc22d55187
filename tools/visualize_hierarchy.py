#!/usr/bin/env python
"""See the hierarchy: cluster boundaries, leakage (undersegmentation error) and cluster maps.

For every image, writes two PNG panels to ``--output`` (see hcformer/utils/hierarchy_visualization.py
for how to read them):

- ``<image id>_hierarchy.png``: per level, the cluster boundaries over the image (top) and the
  leaked pixels in red with the level's UE / ASA (bottom), then the ground truth and the
  prediction (the paper's Fig. 5 / III);
- ``<image id>_clusters.png``: per level, one random colour per cluster, then the prediction
  (Fig. IV).

A config under ``projects/<Project>/`` is read with that project's keys and models: the tool
imports the project's package first (``--project`` names the project of a config that lies
elsewhere, e.g. the ``config.yaml`` a training run wrote to its output directory).

``--html DIR`` writes the hierarchy explorer instead of (or next to) the panels: ``DIR/index.html``
and one page per image under ``DIR/images/``, each a single self-contained file (no server, no
network) with a level slider, the boundaries of the chosen level, the cluster under the mouse
with its parent one level coarser, its majority ground-truth class and leaked pixels, the
prediction and ground truth as overlays, and the UE / ASA table (see hcformer/utils/hierarchy_page.py).
The index sorts the images by UE at any level and plots the dataset's pixel-weighted UE / ASA.

Images come from a registered dataset (ground truth from its records: ``pan_seg_file_name`` +
``segments_info``, ``sem_seg_file_name``, or instance ``annotations``) or from files (no ground
truth: boundaries and cluster maps only). ``--json`` writes every image's UE / ASA per level and
for the query clustering (appendix E), with their means.

    # 8 validation images of the shapes demo model
    python tools/visualize_hierarchy.py \\
        --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml \\
        --dataset shapes_val_panoptic_with_sem_seg --num-images 8 \\
        --output out/hierarchy --json out/hierarchy/summary.json \\
        MODEL.WEIGHTS output/shapes_panoptic/model_final.pth
    # a project's model (here HCFormer on HC-PaCa-Tiny): its package is imported for the config
    python tools/visualize_hierarchy.py \\
        --config-file projects/PaCa/configs/shapes/hcformer_hc_paca_tiny_shapes.yaml \\
        --dataset shapes_sem_seg_val --output out/paca MODEL.WEIGHTS output/paca/model_final.pth
    # the same images as web pages: open out/explorer/index.html in a browser
    python tools/visualize_hierarchy.py \\
        --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml \\
        --dataset shapes_val_panoptic_with_sem_seg --num-images 8 \\
        --html out/explorer MODEL.WEIGHTS output/shapes_panoptic/model_final.pth
    # your own photos, levels 0 and 2 only
    python tools/visualize_hierarchy.py --config-file <config> --input photos/*.jpg \\
        --levels 0 2 --output out/photos MODEL.WEIGHTS <weights>
"""
import argparse
import difflib
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, Metadata, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

import hcformer  # noqa: F401  registers the models
import hcformer.data  # noqa: F401  registers the datasets
from hcformer.data.datasets import import_dataset_packages
from hcformer.engine.inference_model import build_inference_model, inference_cfg
from hcformer.evaluation import ground_truth_kind, load_segment_ground_truth, undersegmentation_counts
from hcformer.modeling import HCFormer
from hcformer.utils import hierarchy_page
from hcformer.utils.hierarchy_visualization import LevelMap, draw_hierarchy, draw_prediction, visualization_metadata
from hcformer_deploy.image_files import expand_image_paths

logger = logging.getLogger("hcformer.visualize_hierarchy")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--project", metavar="DIR", help="a project to import, e.g. projects/PaCa (default: the config file's)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="NAME", help="a registered dataset (ground truth from its records)")
    source.add_argument("--input", nargs="+", metavar="PATH", help="image files, directories or globs (no ground truth)")
    parser.add_argument("--num-images", type=int, default=8, help="with --dataset: its first K images (default 8)")
    parser.add_argument("--output", metavar="DIR", help="directory for the PNG panels")
    parser.add_argument(
        "--html", metavar="DIR", help="directory for the explorer: index.html and one self-contained page per image"
    )
    parser.add_argument("--levels", type=int, nargs="+", metavar="K", help="levels to draw (default: all)")
    parser.add_argument("--json", metavar="FILE", help="write per-image and mean UE / ASA to this JSON file")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="instances below this score are not drawn"
    )
    parser.add_argument(
        "--max-cell-size", type=int, default=640, help="larger images are shrunk to this longest side (0: never)"
    )
    parser.add_argument(
        "--min-cell-size", type=int, default=256, help="smaller images are enlarged to at least this size (0: never)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images must be at least 1, got {args.num_images}")
    if not (args.output or args.html or args.json):
        parser.error("nothing to write: give --output DIR (PNG panels), --html DIR (explorer pages) and/or --json FILE")
    return args


def check_dataset(name: str) -> None:
    """Raise a ValueError naming the registered datasets closest to ``name`` if it is not one.
    A name of a dataset package (``shapes_*``: hcformer_shapes) imports that package first."""
    import_dataset_packages([name])
    if name in DatasetCatalog:
        return
    registered = sorted(DatasetCatalog)
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
    nearest = (
        f"closest: {', '.join(close)}" if close else f"none of the {len(registered)} registered datasets is close to it"
    )
    raise ValueError(
        f"--dataset {name!r} is not registered; {nearest} (DATASETS.COCO_INSTANCES / COCO_PANOPTIC / "
        "SEM_SEG in the config register your own)"
    )


def iterate_records(args: argparse.Namespace) -> Tuple[List[Dict], Optional[str]]:
    """(records to visualise, dataset name or None): dataset records or one record per file."""
    if args.dataset:
        return DatasetCatalog.get(args.dataset)[: args.num_images], args.dataset
    paths = expand_image_paths(args.input)
    return [{"file_name": p, "image_id": os.path.splitext(os.path.basename(p))[0]} for p in paths], None


def safe_name(image_id) -> str:
    """An image id as a file name: characters other than letters, digits, '-' and '.' become '_'."""
    return re.sub(r"[^\w.-]", "_", str(image_id))


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return numerator / denominator if denominator else None  # JSON has no NaN


def summarise(images: List[Dict]) -> Dict[str, Dict[str, Optional[float]]]:
    """Means over the images that have ground truth, per clustering: "UE" and "ASA" averaged
    per image, and "UE_pixel_weighted" / "ASA_pixel_weighted" = Σ numerators / Σ N (what
    HierarchyEvaluator reports)."""
    scored = [im for im in images if im["num_pixels"]]
    means = {}
    for name in scored[0]["scores"] if scored else []:
        counts = [im["scores"][name] for im in scored]
        total = sum(im["num_pixels"] for im in scored)
        means[name] = {
            "UE": float(np.mean([c["UE"] for c in counts])),
            "ASA": float(np.mean([c["ASA"] for c in counts])),
            "UE_pixel_weighted": _ratio(sum(c["leaked"] for c in counts), total),
            "ASA_pixel_weighted": _ratio(sum(c["achievable"] for c in counts), total),
        }
    return means


def ground_truth_class_names(dataset: str, record: Dict, kind: str, gt: np.ndarray) -> Dict[int, str]:
    """{segment id of ``gt``: class name} from the dataset's metadata (the explorer's "majority
    class"): instance datasets name their thing classes, the others all classes as stuff
    (Mask2Former convention)."""
    metadata = MetadataCatalog.get(dataset)
    if kind == "instance":
        names = metadata.get("thing_classes", [])
    else:
        names = metadata.get("stuff_classes", []) or metadata.get("thing_classes", [])
    return hierarchy_page.segment_class_names(record, kind, gt, names)


def write_explorer_page(
    args: argparse.Namespace,
    image: np.ndarray,
    level_maps: List[LevelMap],
    queries: torch.Tensor,
    entry: Dict,
    prediction: Dict,
    metadata: Metadata,
    ground_truth: Dict,
    name: str,
    links: Dict[str, Optional[str]],
) -> Dict:
    """Write the explorer page of one image to ``--html``/images/``name``; return its entry of
    the index. ``ground_truth``: the ground-truth arguments of ``image_page_data`` (none without)."""
    page_clusterings = [
        hierarchy_page.PageClustering(f"level{m.level}", m.labels, m.stride, entry["scores"].get(f"level{m.level}"))
        for m in level_maps
    ]
    page_clusterings.append(
        hierarchy_page.PageClustering("queries", queries.cpu().numpy(), scores=entry["scores"].get("queries"))
    )
    # one picture per output the model gave (the panels draw only the first of them)
    pictures = {}
    for output, key in (("panoptic", "panoptic_seg"), ("instances", "instances"), ("semantic", "sem_seg")):
        if key in prediction:
            picture = draw_prediction(image, {key: prediction[key]}, metadata, args.confidence_threshold)
            if picture.shape != image.shape:  # the Visualizer rounds its canvas: back to the image's pixels
                picture = cv2.resize(picture, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
            pictures[output] = picture
    data = hierarchy_page.image_page_data(
        str(entry["image_id"]),
        image,
        page_clusterings,
        predictions=pictures,
        links=links,
        **ground_truth,
    )
    path = os.path.join(args.html, "images", name)
    size = hierarchy_page.write_page(path, "image", data, title=f"{entry['image_id']} · hierarchy explorer")
    logger.info("Wrote %s (%.1f MB)", path, size / 2**20)
    return hierarchy_page.index_entry(data, image, href=f"images/{name}")


def visualize_image(
    args: argparse.Namespace,
    model: torch.nn.Module,
    mapper: DatasetMapper,
    metadata: Metadata,
    record: Dict,
    dataset: Optional[str],
    index: int,
    page: Optional[Tuple[str, Dict[str, Optional[str]]]] = None,
) -> Tuple[Dict, Optional[Dict]]:
    """Write the two panels (with --output) and the explorer page (``page``: its file name and
    links, with --html) of one image; return its entry of the JSON summary and of the index."""
    inputs = [mapper(dict(record))]
    gt, ignore_label, kind = None, None, None
    if dataset is not None:
        dataset_metadata = MetadataCatalog.get(dataset)
        kind = ground_truth_kind(record, dataset_metadata.get("evaluator_type", ""))
        gt, ignore_label = load_segment_ground_truth(record, kind, dataset_metadata.get("ignore_label", 255))
    requested = ["levels"] if args.levels is None else [f"level{k}" for k in args.levels]
    # the query clustering is a (Q, H, W) computation: only worth it when it is scored or explored
    if gt is not None or page is not None:
        requested.append("queries")
    with torch.no_grad():
        outputs = model(inputs, clusterings=requested)
    clusterings, strides = outputs[0]["clusterings"], outputs[0]["level_strides"]
    levels = sorted(int(name[5:]) for name in clusterings if name.startswith("level"))
    level_maps = [LevelMap(k, clusterings[f"level{k}"].cpu().numpy(), strides[k]) for k in levels]
    image = read_image(record["file_name"], format="RGB")
    panels = {}
    if args.output:
        figure = draw_hierarchy(
            image,
            level_maps,
            gt,
            ignore_label,
            outputs[0],
            metadata,
            score_threshold=args.confidence_threshold,
            max_cell_size=args.max_cell_size or None,
            min_cell_size=args.min_cell_size or None,
        )
        stem = os.path.join(args.output, safe_name(record.get("image_id", index)))
        panels = {"hierarchy": f"{stem}_hierarchy.png", "clusters": f"{stem}_clusters.png"}
        for kind_of_panel, path in panels.items():
            # cv2 writes BGR; full compression: the panels are large and written once
            cv2.imwrite(path, getattr(figure, kind_of_panel)[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
        level_counts = figure.scores
    elif gt is not None:  # the same counts as the panels' titles, without drawing them
        level_counts = {m.level: undersegmentation_counts(gt, m.labels, ignore_label) for m in level_maps}

    entry = {
        "image_id": record.get("image_id", index),
        "file_name": record["file_name"],
        "ground_truth": kind,
        "panels": panels,
        "levels": {
            f"level{m.level}": {"stride": m.stride, "num_clusters": int(len(np.unique(m.labels)))} for m in level_maps
        },
        "num_pixels": 0,  # labelled pixels of the ground truth
        "scores": {},
    }
    if gt is not None:
        counts = {f"level{k}": c for k, c in level_counts.items()}
        counts["queries"] = undersegmentation_counts(gt, clusterings["queries"], ignore_label)
        entry["num_pixels"] = counts["queries"].num_pixels
        entry["scores"] = {
            name: {
                "UE": _ratio(c.leaked, c.num_pixels),
                "ASA": _ratio(c.achievable, c.num_pixels),
                "leaked": c.leaked,
                "achievable": c.achievable,
            }
            for name, c in counts.items()
        }
    index_entry = None
    if page is not None:
        ground_truth = {}
        if gt is not None:
            class_names = ground_truth_class_names(dataset, record, kind, gt)
            ground_truth = {"gt": gt, "ignore_label": ignore_label, "ground_truth_kind": kind, "class_names": class_names}
        name, links = page
        index_entry = write_explorer_page(
            args, image, level_maps, clusterings["queries"], entry, outputs[0], metadata, ground_truth, name, links
        )
    return entry, index_entry


def page_links(names: List[str]) -> List[Dict[str, Optional[str]]]:
    """Per page (all in one directory, the index one level up): its own, the index's, the
    previous and the next page's relative URLs."""
    return [
        {
            "self": name,
            "index": "../index.html",
            "previous": names[i - 1] if i > 0 else None,
            "next": names[i + 1] if i + 1 < len(names) else None,
        }
        for i, name in enumerate(names)
    ]


def visualize(args: argparse.Namespace) -> Dict:
    """Write the panels, the explorer pages and the JSON summary asked for; return the summary."""
    cfg = inference_cfg(args.config_file, args.opts, project=args.project)  # registers the config's own datasets
    if args.dataset:
        check_dataset(args.dataset)  # before the model is built and loaded
    model = build_inference_model(cfg)
    if not isinstance(model, HCFormer):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} has no cluster hierarchy to draw; this tool "
            "needs an HCFormer (a project may have its own, e.g. projects/PaCa/tools/visualize_paca_clusters.py)"
        )
    metadata = visualization_metadata(cfg)
    records, dataset = iterate_records(args)
    if not records:
        raise ValueError("No images to visualise: the dataset is empty or --input matched nothing")
    mapper = DatasetMapper(cfg, is_train=False)  # the test-time resize, as evaluation does
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    pages = [None] * len(records)
    if args.html:
        os.makedirs(os.path.join(args.html, "images"), exist_ok=True)
        page_names = hierarchy_page.page_names([r.get("image_id", i) for i, r in enumerate(records)])
        pages = list(zip(page_names, page_links(page_names)))

    results = [
        visualize_image(args, model, mapper, metadata, record, dataset, index, page)
        for index, (record, page) in enumerate(tqdm(list(zip(records, pages)), desc="hierarchy", unit="image"))
    ]
    images = [entry for entry, _ in results]
    summary = {
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "dataset": dataset,
        "images": images,
        "mean": summarise(images),
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    for name, mean in summary["mean"].items():
        logger.info("%-8s UE %.4f  ASA %.4f (mean over %d images)", name, mean["UE"], mean["ASA"], len(images))
    if args.output:
        logger.info("Wrote %d panels to %s", 2 * len(images), args.output)
    if args.html:
        title = f"{dataset or 'images'} · {os.path.basename(args.config_file)} · hierarchy explorer"
        index = hierarchy_page.index_page_data([e for _, e in results], summary["mean"], title)
        path = os.path.join(args.html, "index.html")
        hierarchy_page.write_page(path, "index", index, title=title)
        logger.info("Wrote the explorer of %d images: open %s", len(images), os.path.abspath(path))
    return summary


def main(argv: Optional[List[str]] = None) -> Dict:
    setup_logger(name="hcformer")
    setup_logger(name="fvcore")  # the checkpointer's messages
    return visualize(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])

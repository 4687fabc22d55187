#!/usr/bin/env python
"""Draw the cluster assignments of a PaCa backbone (paper §3.3): one PNG grid per image,
M heatmaps per clustered stage (``--every-block``: per clustering block).

    python projects/PaCa/tools/visualize_paca_clusters.py \\
        --config-file projects/PaCa/configs/shapes/paca_head_paca_tiny_shapes.yaml \\
        --input img1.jpg img2.jpg --output out/ MODEL.WEIGHTS output/model_final.pth
    # the first 4 images of the config's test set, as eq. (8) masked images, 20 clusters per stage
    python projects/PaCa/tools/visualize_paca_clusters.py --config-file <config> -n 4 \\
        --mode mask --max-clusters 20 --output out/
    # block-wise clustering: every block's assignment, not only each stage's first
    python projects/PaCa/tools/visualize_paca_clusters.py --config-file <config> --input img.jpg \\
        --every-block --output out/ MODEL.PACA.CLUSTERING_SCOPE block MODEL.WEIGHTS <weights>

Images are resized as at test time (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) and not padded:
the backbone takes any size, so every heatmap covers the image exactly.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hcformer  # noqa: E402,F401  registers HCFormer and the datasets
from hcformer.data.datasets import register_datasets_from_config  # noqa: E402
from paca.checkpoint import PaCaCheckpointer  # noqa: E402
from paca.engine import get_paca_cfg  # noqa: E402
from paca.modeling import PaCaBackbone  # noqa: E402
from paca.visualization import block_cluster_logits, cluster_logits, render_cluster_grid  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", metavar="IMAGE", help="images (default: DATASETS.TEST[0])")
    parser.add_argument("-n", "--num-images", type=int, default=4, help="test-set images without --input")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--mode", choices=["heatmap", "mask"], default="heatmap")
    parser.add_argument("--max-clusters", type=int, default=None, help="per stage, the largest clusters only")
    parser.add_argument(
        "--every-block",
        action="store_true",
        help="one band per block that clusters (block-wise clustering), not only each stage's first",
    )
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def images(args: argparse.Namespace, cfg) -> Iterator[Tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) for --input, or the first images of DATASETS.TEST[0]."""
    if args.input:
        paths = args.input
    else:
        paths = [d["file_name"] for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[: args.num_images]]
    for path in paths:
        yield Path(path).stem, read_image(path, format="RGB")


def main(argv=None) -> List[Path]:
    """Write one grid per image; return their paths."""
    args = parse_args(argv)
    cfg = get_paca_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_datasets_from_config(cfg)  # DATASETS.TEST[0] without --input (the shapes: hcformer_shapes)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()

    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        PaCaCheckpointer(model, allow_pickle=cfg.MODEL.ALLOW_PICKLE).load(cfg.MODEL.WEIGHTS)
    backbone = model.backbone
    if not isinstance(backbone, PaCaBackbone):
        raise SystemExit(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME} is not a PaCa backbone")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)

    written = []
    for name, image in images(args, cfg):
        if cfg.INPUT.FORMAT == "BGR":
            image = image[..., ::-1]  # the model's channel order; the pictures stay RGB
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
        batch = ((tensor - mean) / std)[None].to(model.device)
        if args.every_block:
            logits = {label: lg[0].cpu() for label, lg in block_cluster_logits(backbone.vit, batch).items()}
        else:
            logits = [None if lg is None else lg[0].cpu() for lg in cluster_logits(backbone.vit, batch)]
        picture = resized[..., ::-1] if cfg.INPUT.FORMAT == "BGR" else resized
        out = render_cluster_grid(
            np.ascontiguousarray(picture),
            logits,
            os.path.join(args.output, f"{name}_clusters.png"),
            columns=args.columns,
            tile_size=args.tile_size,
            max_clusters=args.max_clusters,
            mode=args.mode,
        )
        print(out)
        written.append(out)
    return written


if __name__ == "__main__":
    main()

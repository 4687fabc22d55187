#!/usr/bin/env python
"""UE / ASA of a CAST hierarchy's levels at pixel precision, on a registered dataset.

HCFormer's HierarchyEvaluator scores ``hard_labels(k)``, i.e. the segments on the stride-8 grid
that masks are decoded on. A CAST segment is a union of superpixels, whose boundaries are
pixel-exact: this scores ``pixel_labels_at(k)`` (k ≥ 1: 1 = superpixels, 1 + j = after j graph
poolings), pixel-weighted over the images, as the evaluator does.

    python projects/CAST/tools/evaluate_cast_levels.py \\
        --config-file projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml \\
        --dataset shapes_val_panoptic_with_sem_seg MODEL.WEIGHTS output/model_final.pth
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the cast package
import cast  # noqa: E402,F401  registers D2HCCAST and MODEL.CAST.*

import hcformer.data  # noqa: E402,F401  registers the datasets
from hcformer.engine.inference_model import build_inference_model, inference_cfg  # noqa: E402
from hcformer.evaluation.segment_ground_truth import load_segment_ground_truth  # noqa: E402
from hcformer.evaluation.undersegmentation import undersegmentation_counts  # noqa: E402
from hcformer_deploy.id_maps import resize_ids  # noqa: E402


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--num-images", type=int, default=0, help="first K images only (0: all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cfg = inference_cfg(args.config_file, args.opts)
    model = build_inference_model(cfg)
    mapper = DatasetMapper(cfg, is_train=False)
    records = DatasetCatalog.get(args.dataset)
    records = records[: args.num_images] if args.num_images else records
    ignore = MetadataCatalog.get(args.dataset).get("ignore_label", 255)
    totals: Dict[str, list] = {}
    with torch.no_grad():
        for record in records:
            x = mapper(dict(record))
            images = model.preprocess([x])
            hierarchy = model.backbone(images.tensor, image_sizes=images.image_sizes)["assign"]
            gt, ignore_label = load_segment_ground_truth(record, semantic_ignore_label=ignore)
            h, w = x["image"].shape[-2:]
            for k in range(1, hierarchy.num_levels + 1):
                ids = resize_ids(hierarchy.pixel_labels_at(k)[0, :h, :w], gt.shape).numpy()
                c = undersegmentation_counts(gt, ids, ignore_label)
                t = totals.setdefault(f"level{k}", [0, 0, 0])
                t[0], t[1], t[2] = t[0] + c.leaked, t[1] + c.achievable, t[2] + c.num_pixels
    scores = {}
    for name, (leaked, achievable, pixels) in totals.items():
        scores[f"UE_{name}"] = leaked / pixels
        scores[f"ASA_{name}"] = achievable / pixels
    print(json.dumps({k: round(v, 4) for k, v in scores.items()}))
    return scores


if __name__ == "__main__":
    main()

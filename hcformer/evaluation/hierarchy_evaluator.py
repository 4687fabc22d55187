"""HierarchyEvaluator: undersegmentation error and ASA of every clustering HCFormer computes.

HCFormer's masks are decoded through a hierarchy of clusterings (§2.3 of the paper): a mask can
only be right if no cluster straddles two ground-truth segments. This evaluator measures that for
every level of the hierarchy and for the final assignment of pixels to mask queries (the
"clusterings" the model returns with TEST.HIERARCHY_EVAL, see ``HCFormer.forward`` and
:mod:`hcformer.modeling.postprocess`), with the superpixel scores of
:mod:`hcformer.evaluation.undersegmentation`, at the original image size, against the segments of
:mod:`hcformer.evaluation.segment_ground_truth`:

- panoptic datasets: the segments of the ``pan_seg_file_name`` PNG; void (id 0) and crowd
  segments are ignored;
- semantic datasets: the classes of the ``sem_seg_file_name`` PNG (one segment per class);
  ``ignore_label`` of the metadata (255 by default) is ignored;
- instance datasets (evaluator type "coco" or "cityscapes_instance"): the instances of the
  record's annotations and one background segment; crowd instances are ignored.

Scores are pixel-weighted over the dataset: Σ numerators / Σ N over all images of all workers.

The clusterings come with the outputs, from the forward pass that made the predictions. Outputs
without them (a model built without TEST.HIERARCHY_EVAL, or test-time augmentation, whose
several forward passes have no one hierarchy) make ``process`` run the model once more on the
inputs, asking for them.

The query clustering is computed from the predictions rather than read from the "panoptic_seg"
output: panoptic inference drops low-confidence queries, merges stuff queries of a class and
leaves pixels unassigned, so it is a clustering of a different model, and semantic-only models
have no such output.

Cost (1024×2048 image, 2 CPU cores): the five UE / ASA evaluations take about 0.3 s per image.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hcformer.modeling.meta_arch import ALL_CLUSTERINGS

from .segment_ground_truth import GROUND_TRUTH_KEYS, DatasetRecords, load_segment_ground_truth
from .undersegmentation import undersegmentation_counts

__all__ = ["HierarchyEvaluator"]

logger = logging.getLogger(__name__)


class HierarchyEvaluator(DatasetEvaluator):
    """Pixel-weighted UE and ASA of each hierarchy level and of the query clustering.

    ``evaluate()`` returns ``{"hierarchy": {"UE_level0": .., "ASA_level0": .., ...,
    "UE_levelL": .., "ASA_levelL": .., "UE_queries": .., "ASA_queries": ..}}`` with values in
    [0, 1] (on the main process; ``{}`` elsewhere), and, with ``output_dir``, writes the
    per-image scores to ``output_dir/hierarchy_evaluation.json``.

    Args:
        dataset_name: a registered dataset; its records (or the model inputs) give the
            ground-truth of every image, matched by ``file_name``.
        model: the HCFormer being evaluated (possibly wrapped in DistributedDataParallel),
            run again on the inputs whose outputs hold no "clusterings".
        output_dir: where to write per-image scores; nothing is written if None.

    The ground truth is panoptic if the dataset's ``evaluator_type`` contains "panoptic",
    instance if it is "coco" or "cityscapes_instance", else semantic.
    """

    def __init__(self, dataset_name: str, model: nn.Module, output_dir: Optional[str] = None):
        self._dataset_name = dataset_name
        self._model = model.module if isinstance(model, DistributedDataParallel) else model
        self._output_dir = output_dir
        metadata = MetadataCatalog.get(dataset_name)
        evaluator_type = metadata.get("evaluator_type", "")
        if "panoptic" in evaluator_type:
            self._ground_truth = "panoptic"
        elif evaluator_type in ("coco", "cityscapes_instance"):
            self._ground_truth = "instance"
        else:
            self._ground_truth = "semantic"
        self._semantic_ignore_label = metadata.get("ignore_label", 255)
        self._records = DatasetRecords(dataset_name)
        self._results: List[Dict] = []

    def reset(self) -> None:
        self._results = []

    # ------------------------------------------------------------------ evaluation
    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        if any("clusterings" not in output for output in outputs):
            with inference_context(self._model), torch.no_grad():
                outputs = self._model(inputs, clusterings=ALL_CLUSTERINGS)
        with torch.no_grad():
            for x, clusterings in zip(inputs, (output["clusterings"] for output in outputs)):
                gt, ignore_label = self._load_ground_truth(x)
                out_size = tuple(clusterings["queries"].shape)
                if gt.shape != out_size:
                    raise ValueError(
                        f"Ground truth of {x.get('file_name')} has shape {gt.shape}, "
                        f"expected the image's height × width {out_size}"
                    )
                counts = {
                    name: undersegmentation_counts(gt, ids, ignore_label) for name, ids in clusterings.items()
                }
                self._results.append(
                    {
                        "file_name": x.get("file_name"),
                        "num_pixels": counts["queries"].num_pixels,  # N depends on the ground truth only
                        "counts": {name: (c.leaked, c.achievable) for name, c in counts.items()},
                    }
                )

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        results = list(itertools.chain(*comm.gather(self._results, dst=0)))
        if not comm.is_main_process():
            return {}
        if not results:
            logger.warning("HierarchyEvaluator received no images")
            return {}
        total = sum(r["num_pixels"] for r in results)
        scores = OrderedDict()
        for name in results[0]["counts"]:
            scores[f"UE_{name}"] = _ratio(sum(r["counts"][name][0] for r in results), total)
            scores[f"ASA_{name}"] = _ratio(sum(r["counts"][name][1] for r in results), total)
        if self._output_dir:
            self._save(results, scores)
        return OrderedDict(hierarchy=scores)

    def _save(self, results: List[Dict], scores: Dict[str, float]) -> None:
        per_image = []
        for r in results:
            n = r["num_pixels"]
            entry = {"file_name": r["file_name"], "num_pixels": n}
            for name, (leaked, achievable) in r["counts"].items():
                entry[f"UE_{name}"], entry[f"ASA_{name}"] = _ratio(leaked, n), _ratio(achievable, n)
            per_image.append(entry)
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "hierarchy_evaluation.json")
        with PathManager.open(path, "w") as f:
            json.dump({"dataset": self._dataset_name, "scores": scores, "images": per_image}, f)

    # ------------------------------------------------------------------ ground truth
    def _load_ground_truth(self, x: Dict) -> Tuple[np.ndarray, int]:
        """(H, W) int segment ids of the original image and the id to ignore."""
        record = self._records.with_keys(x, (GROUND_TRUTH_KEYS[self._ground_truth],))
        return load_segment_ground_truth(record, self._ground_truth, self._semantic_ignore_label)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")

"""HierarchyEvaluator: undersegmentation error and ASA of every clustering HCFormer computes.

HCFormer's masks are decoded through a hierarchy of clusterings (§2.3 of the paper): a mask can
only be right if no cluster straddles two ground-truth segments. This evaluator measures that for
every level of the hierarchy and for the final assignment of pixels to mask queries, with the
superpixel scores of :mod:`hcformer.evaluation.undersegmentation`:

============  ===================================================================================
clustering    definition
============  ===================================================================================
level k       hard clustering of level k (``Hierarchy.hard_labels(k)``): the argmax assignments
              of the k finest clustering layers composed; level 0 is the finest grid itself
              (one cluster per cell of stride ``finest_stride``), level L = num_levels the
              coarsest grid (stride 32). A level-k cluster has (roughly) stride finest·2^k.
queries       every pixel goes to the query maximising P_{i,c_i}·sigmoid(M_ji) over the queries
              whose most likely class c_i is not "no object" (appendix E of the paper), see
              :func:`query_clustering`.
============  ===================================================================================

Cluster maps are computed on the padded input, cropped to the image and resized to the original
height × width (nearest for the levels, bilinear mask logits for the queries, as the model's own
post-processing does), then compared with the ground truth at that size:

- panoptic datasets: the segments of the ``pan_seg_file_name`` PNG; void (id 0) and crowd
  segments are ignored;
- semantic datasets: the classes of the ``sem_seg_file_name`` PNG (one segment per class);
  ``ignore_label`` of the metadata (255 by default) is ignored.

Scores are pixel-weighted over the dataset: Σ numerators / Σ N over all images of all workers.

Getting the hierarchy without a second forward pass: the standard outputs of the model do not
carry the hierarchy. Between ``reset()`` and ``evaluate()`` this evaluator puts forward hooks on
``model.backbone`` (which returns the hierarchy as ``features["assign"]``) and on
``model.sem_seg_head`` (the query predictions at the coarsest stride), so ``process`` reuses what
the inference forward computed; it only decodes the Q mask logits once more through the
hierarchy (a few gathers, small next to the backbone). If ``process`` cannot be matched to
exactly one preceding inference forward of the same batch size (e.g. under test-time
augmentation, which runs several), it re-runs ``model.preprocess`` + ``model.run`` on the inputs.

The query clustering is computed from the predictions rather than read from the "panoptic_seg"
output: panoptic inference drops low-confidence queries, merges stuff queries of a class and
leaves pixels unassigned, so it is a clustering of a different model, and semantic-only models
have no such output.

Cost (1024×2048 image, 100 queries, 2 CPU cores): ``process`` takes about 2.5 s, mostly the
(Q, H, W) sigmoid and argmax of the query clustering; the five UE / ASA evaluations take about
0.3 s. The ResNet-18 model's own forward pass takes 8–10 s there.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.evaluator import inference_context
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from panopticapi.utils import rgb2id
from PIL import Image
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from hcformer.modeling.hierarchy import Hierarchy

from .undersegmentation import undersegmentation_counts

__all__ = ["HierarchyEvaluator", "query_clustering"]

logger = logging.getLogger(__name__)


def query_clustering(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """Assign every pixel to a mask query: argmax_{i: c_i ≠ ∅} P_{i,c_i} · sigmoid(M_ji).

    P = softmax(pred_logits) and c_i = argmax_c P_ic over the K classes and "no object" (∅):
    this is the arg max of the paper's appendix E, under which the segmentation head is itself
    a clustering of the pixels with the queries as prototypes. If every query predicts ∅ (an
    untrained model), all queries compete with their best non-void probability instead.

    Args:
        pred_logits: (Q, K+1) class logits, "no object" last.
        pred_masks: (Q, H, W) mask logits.

    Returns:
        (H, W) int64 index of the winning query.
    """
    probs = pred_logits.softmax(-1)
    scores = probs[:, :-1].max(-1).values  # = P_{i,c_i} for the queries kept below
    kept = (probs.argmax(-1) != probs.shape[-1] - 1).nonzero()[:, 0]
    if len(kept) == 0 or len(kept) == len(probs):
        kept = torch.arange(len(probs), device=probs.device)
        similarity = pred_masks.sigmoid()  # no indexing copy of the (Q, H, W) masks
    else:
        similarity = pred_masks[kept].sigmoid()
    # in place: at 1024×2048 with 100 queries, each (Q, H, W) temporary is 800 MB
    winner = similarity.mul_(scores[kept, None, None]).argmax(0)
    return kept[winner]


@dataclass
class _Forward:
    """What the evaluator needs from one inference forward pass of a batch."""

    padded_size: Tuple[int, int]  # (H, W) of the padded batch tensor
    batch_size: int
    hierarchy: Hierarchy
    pred_logits: Optional[Tensor] = None  # (B, Q, K+1)
    pred_masks: Optional[Tensor] = None  # (B, Q, h, w) mask logits
    masks_decoded: bool = False  # pred_masks at the finest level (True) or the coarsest (False)


class HierarchyEvaluator(DatasetEvaluator):
    """Pixel-weighted UE and ASA of each hierarchy level and of the query clustering.

    ``evaluate()`` returns ``{"hierarchy": {"UE_level0": .., "ASA_level0": .., ...,
    "UE_levelL": .., "ASA_levelL": .., "UE_queries": .., "ASA_queries": ..}}`` with values in
    [0, 1] (on the main process; ``{}`` elsewhere), and, with ``output_dir``, writes the
    per-image scores to ``output_dir/hierarchy_evaluation.json``.

    Args:
        dataset_name: a registered dataset; its records (or the model inputs) give the
            ground-truth file of every image, matched by ``file_name``.
        model: the HCFormer being evaluated (possibly wrapped in DistributedDataParallel):
            it needs ``backbone``, ``sem_seg_head``, ``preprocess`` and ``run``.
        output_dir: where to write per-image scores; nothing is written if None.
        ground_truth: "panoptic" or "semantic"; by default "panoptic" if the dataset's
            ``evaluator_type`` contains "panoptic", else "semantic".
    """

    def __init__(
        self,
        dataset_name: str,
        model: nn.Module,
        output_dir: Optional[str] = None,
        *,
        ground_truth: Optional[str] = None,
    ):
        self._dataset_name = dataset_name
        self._model = model.module if isinstance(model, DistributedDataParallel) else model
        self._output_dir = output_dir
        metadata = MetadataCatalog.get(dataset_name)
        if ground_truth is None:
            ground_truth = "panoptic" if "panoptic" in metadata.get("evaluator_type", "") else "semantic"
        if ground_truth not in ("panoptic", "semantic"):
            raise ValueError(f'ground_truth must be "panoptic" or "semantic", got {ground_truth!r}')
        self._ground_truth = ground_truth
        self._semantic_ignore_label = metadata.get("ignore_label", 255)
        self._records_by_file: Optional[Dict[str, Dict]] = None  # the dataset's, read when needed
        self._hooks: List[torch.utils.hooks.RemovableHandle] = []
        self._last_forward: Optional[_Forward] = None
        self._forwards_since_process = 0
        self._results: List[Dict] = []

    # ------------------------------------------------------------------ hooks
    def reset(self) -> None:
        self._results = []
        self._remove_hooks()
        self._hooks = [
            self._model.backbone.register_forward_hook(self._on_backbone),
            self._model.sem_seg_head.register_forward_hook(self._on_head),
        ]
        self._last_forward, self._forwards_since_process = None, 0

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _on_backbone(self, module: nn.Module, args: Tuple, output: Dict) -> None:
        if module.training:  # a training step between evaluations is none of our business
            return
        images = args[0]
        self._last_forward = _Forward(tuple(images.shape[-2:]), images.shape[0], output["assign"])
        self._forwards_since_process += 1

    def _on_head(self, module: nn.Module, args: Tuple, output: Dict) -> None:
        if module.training or self._last_forward is None:
            return
        # The tensors, not the dict: HCFormer.run replaces the dict's masks by decoded ones.
        self._last_forward.pred_logits = output["pred_logits"]
        self._last_forward.pred_masks = output["pred_masks"]

    def _forward_of(self, inputs: List[Dict]) -> _Forward:
        """The forward pass of this batch: the hooked one if unambiguous, else a new one."""
        forward, count = self._last_forward, self._forwards_since_process
        if count == 1 and forward.pred_masks is not None and forward.batch_size == len(inputs):
            return forward
        if count > 1:
            logger.debug("HierarchyEvaluator: %d forward passes for one batch, re-running the model", count)
        model = self._model
        with inference_context(model), torch.no_grad():
            images = model.preprocess(inputs)
            outputs, hierarchy = model.run(images)
        return _Forward(
            tuple(images.tensor.shape[-2:]), len(inputs), hierarchy,
            outputs["pred_logits"], outputs["pred_masks"], masks_decoded=True,
        )

    # ------------------------------------------------------------------ evaluation
    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        forward = self._forward_of(inputs)
        self._last_forward, self._forwards_since_process = None, 0
        with torch.no_grad():
            for x, clusterings in zip(inputs, _clusterings(forward, inputs)):
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
        self._remove_hooks()
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
        if self._ground_truth == "panoptic":
            record = self._record_with(x, "pan_seg_file_name")
            with PathManager.open(record["pan_seg_file_name"], "rb") as f:
                ids = rgb2id(np.asarray(Image.open(f).convert("RGB"), dtype=np.int64))
            crowd = [s["id"] for s in record.get("segments_info", []) if s.get("iscrowd", 0)]
            if crowd:
                ids[np.isin(ids, crowd)] = 0  # crowd regions are unlabelled, like void
            return ids, 0
        record = self._record_with(x, "sem_seg_file_name")
        with PathManager.open(record["sem_seg_file_name"], "rb") as f:
            return np.asarray(Image.open(f), dtype=np.int64), self._semantic_ignore_label

    def _record_with(self, x: Dict, key: str) -> Dict:
        """The input itself if it names its ground truth, else its record in the dataset.

        Test-time mappers may drop the ground-truth fields (detectron2's DatasetMapper drops
        ``sem_seg_file_name``), so the dataset's records are looked up by ``file_name``.
        """
        if key in x:
            return x
        if self._records_by_file is None:
            self._records_by_file = {r["file_name"]: r for r in DatasetCatalog.get(self._dataset_name)}
        record = self._records_by_file.get(x.get("file_name"))
        if record is None or key not in record:
            raise KeyError(
                f"No {key} for image {x.get('file_name')!r} in the input or in dataset {self._dataset_name!r}"
            )
        return record


def _clusterings(forward: _Forward, inputs: List[Dict]) -> Iterator[Dict[str, Tensor]]:
    """Per image: {"level0": .., ..., "levelL": .., "queries": ..}, (height, width) int64 ids each."""
    hierarchy, padded_size = forward.hierarchy, forward.padded_size
    masks = forward.pred_masks if forward.masks_decoded else hierarchy.decode(forward.pred_masks)
    # mask logits at the padded input size, as HCFormer.inference upsamples them
    masks = F.interpolate(masks, size=padded_size, mode="bilinear", align_corners=False)
    # (B, H_pad, W_pad) per level; a hierarchy without assignments has no batch dimension
    levels = [
        hierarchy.hard_labels(k, output_size=padded_size).expand(forward.batch_size, -1, -1)
        for k in range(hierarchy.num_levels + 1)
    ]
    for i, x in enumerate(inputs):
        image_size = tuple(x["image"].shape[-2:])
        out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
        clusterings = {
            f"level{k}": _resize_labels(labels[i], image_size, out_size) for k, labels in enumerate(levels)
        }
        image_masks = masks[i, :, : image_size[0], : image_size[1]]
        if image_masks.shape[-2:] != out_size:  # skip the identity resize: (Q, H, W) can be large
            image_masks = sem_seg_postprocess(image_masks, image_size, *out_size)
        clusterings["queries"] = query_clustering(forward.pred_logits[i], image_masks)
        yield clusterings


def _resize_labels(labels: Tensor, image_size: Tuple[int, int], out_size: Tuple[int, int]) -> Tensor:
    """Crop (H_pad, W_pad) ids to the image and resize them (nearest) to the original size."""
    labels = labels[: image_size[0], : image_size[1]]
    # float64 keeps every id exact (float32 would round ids above 2^24)
    resized = F.interpolate(labels[None, None].double(), size=out_size, mode="nearest")
    return resized[0, 0].long()


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")

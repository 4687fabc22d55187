"""Choose the evaluators of a dataset from its ``evaluator_type`` metadata (Mask2Former rules).

=========================  ===============================================================
evaluator_type             evaluators
=========================  ===============================================================
sem_seg                    CheckedSemSegEvaluator (mIoU)
coco                       COCOEvaluator, mask AP only
coco_panoptic_seg          CheckedCOCOPanopticEvaluator if TEST.PANOPTIC_ON,
                           CheckedSemSegEvaluator if TEST.SEMANTIC_ON,
                           :class:`ThingsCOCOEvaluator` (mask AP) if TEST.INSTANCE_ON
ade20k_panoptic_seg        as coco_panoptic_seg
cityscapes_sem_seg         CityscapesSemSegEvaluator
cityscapes_instance        CityscapesInstanceEvaluator
cityscapes_panoptic_seg    CheckedCOCOPanopticEvaluator / CityscapesSemSegEvaluator /
                           CityscapesInstanceEvaluator per PANOPTIC_ON / SEMANTIC_ON / INSTANCE_ON
=========================  ===============================================================

(TEST.* means ``cfg.MODEL.MASK_FORMER.TEST.*``.) Unlike Mask2Former, the panoptic datasets add an
evaluator only for the outputs the model is configured to produce: an evaluator that reads an
output the model does not return would fail after the whole inference pass.

The semantic and panoptic evaluators are detectron2's with the ground truth checked like training
labels (see :mod:`hcformer.evaluation.checked_evaluators`): a ground-truth PNG of the wrong mode
or size, with class ids the dataset does not have or with segments missing from the JSON stops
the evaluation with its name instead of being scored.

CPU / pure-Python detectron2 notes: COCOEvaluator is always built with ``use_fast_impl=False``
(the fast implementation needs detectron2's compiled ``_C``), so pycocotools' official COCOeval
is used. COCOPanopticEvaluator and SemSegEvaluator of detectron2 v0.6 (the bases of ours) use ``np.int`` /
``np.float``, which numpy 1.24 removed: scripts/install.sh's pure-Python detectron2 has them rewritten
to ``int`` / ``float``; an official v0.6 build fails there on the numpy >= 1.25 that matplotlib 3.11
needs, so GPU users build detectron2's main (README, Install). The Cityscapes evaluators run
cityscapesscripts 2.3.0 (its latest release), which needs numpy < 2: numpy 2.4 removed the
``np.in1d`` its semantic evaluation calls, and from numpy 2.0 its instance evaluation writes numpy
integers to JSON, which ``json`` refuses; they are refused under numpy 2 with that said.
"""

import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
)

from .checked_evaluators import CheckedCOCOPanopticEvaluator, CheckedSemSegEvaluator

__all__ = ["EVALUATOR_TYPES", "ThingsCOCOEvaluator", "build_evaluator", "check_numpy_for_cityscapes"]

EVALUATOR_TYPES = (
    "sem_seg",
    "coco",
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_sem_seg",
    "cityscapes_instance",
    "cityscapes_panoptic_seg",
)


def _ensure_json_file(dataset_name: str) -> None:
    """COCOEvaluator reads the dataset's ``json_file`` when built. If it is not on disk yet, run
    the dataset's loader: it generates lazily made datasets (shapes) or raises a clear
    "missing dataset" error for real ones."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file")
    if json_file and not os.path.exists(json_file):
        DatasetCatalog.get(dataset_name)


def _mask_ap_evaluator(
    dataset_name: str, output_folder: Optional[str], things_only: bool = False
) -> COCOEvaluator:
    """COCOEvaluator (``things_only``: ThingsCOCOEvaluator) of the dataset's instance JSON.

    pycocotools reads the JSON while the evaluator is built, and a broken file would fail with
    a bare ``JSONDecodeError`` / ``KeyError`` naming neither the dataset nor the file.
    """
    _ensure_json_file(dataset_name)
    try:
        if things_only:
            return ThingsCOCOEvaluator(dataset_name, output_dir=output_folder)
        # Only "segm": mask-based models predict no real boxes, so box AP would be meaningless.
        return COCOEvaluator(
            dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False
        )
    except Exception as e:  # noqa: BLE001  whatever pycocotools raised, the file is unusable
        json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
        hint = (
            " To evaluate without mask AP, set MODEL.MASK_FORMER.TEST.INSTANCE_ON False."
            if MetadataCatalog.get(dataset_name).get("evaluator_type") != "coco"
            else ""
        )
        raise ValueError(
            f"Cannot build the mask AP evaluator of dataset '{dataset_name}': its instance "
            f"annotations {json_file or '(no json_file in its metadata)'} could not be read "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Is the file "
            f"truncated or not COCO JSON? Regenerate or download it again.{hint}"
        ) from None


class ThingsCOCOEvaluator(COCOEvaluator):
    """Mask AP of a panoptic dataset, whose contiguous ids index things and stuff together.

    With the Mask2Former metadata convention, contiguous ids index all categories; detectron2's
    COCOEvaluator requires thing ids 0..T-1 (true for COCO, where things come first, but not for
    ADE20K panoptic). This evaluator renumbers predicted classes to the things' rank (the
    identity where things come first) and gives COCOEvaluator a private metadata copy with the
    matching map. Predictions of stuff classes are dropped (they cannot match any instance
    annotation; COCOEvaluator would fail on their ids).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        _ensure_json_file(dataset_name)
        super().__init__(dataset_name, tasks=("segm",), output_dir=output_dir, use_fast_impl=False)
        thing_map = self._metadata.thing_dataset_id_to_contiguous_id
        dataset_ids = sorted(thing_map, key=thing_map.get)
        self._thing_rank = {thing_map[d]: rank for rank, d in enumerate(dataset_ids)}
        fields = dict(self._metadata.as_dict())
        fields["thing_dataset_id_to_contiguous_id"] = {d: r for r, d in enumerate(dataset_ids)}
        self._metadata = Metadata(**fields)  # private copy: the catalog entry stays unchanged

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        renumbered = []
        for output in outputs:
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                classes = instances.pred_classes.tolist()
                keep = [c in self._thing_rank for c in classes]
                instances = instances[torch.tensor(keep, dtype=torch.bool)]
                instances.pred_classes = torch.tensor(
                    [self._thing_rank[c] for c, k in zip(classes, keep) if k], dtype=torch.int64
                )
                output = {**output, "instances": instances}
            renumbered.append(output)
        super().process(inputs, renumbered)


def check_numpy_for_cityscapes(dataset_name: str, numpy_version: str) -> None:
    """Refuse numpy >= 2 for cityscapesscripts' evaluation (module docstring), before inference."""
    if int(numpy_version.split(".")[0]) >= 2:
        raise RuntimeError(
            f"Dataset '{dataset_name}' is evaluated by cityscapesscripts, whose evaluation fails under "
            f"numpy 2 (np.in1d is gone from numpy 2.4; numpy integers in its JSON); this environment "
            f"has numpy {numpy_version}: install numpy<2 (scripts/install.sh does on its detectron2 v0.6 path)"
        )


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """Evaluator(s) for ``dataset_name``; several are combined with DatasetEvaluators.

    Args:
        output_folder: where evaluators dump predictions; default ``cfg.OUTPUT_DIR/inference``.

    Raises:
        ValueError: the dataset has no or an unknown ``evaluator_type``, the TEST.*_ON flags
            select no evaluator for it, or its instance JSON (for mask AP) cannot be read.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(
            f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r}; build_evaluator "
            f"knows {list(EVALUATOR_TYPES)}"
        )
    cityscapes = evaluator_type.startswith("cityscapes")
    if cityscapes:
        check_numpy_for_cityscapes(dataset_name, np.__version__)

    def semantic() -> DatasetEvaluator:
        if cityscapes:
            return CityscapesSemSegEvaluator(dataset_name)
        return CheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    def instance() -> DatasetEvaluator:
        if cityscapes:
            return CityscapesInstanceEvaluator(dataset_name)
        # a panoptic dataset's classes include stuff: mask AP renumbers its things
        return _mask_ap_evaluator(dataset_name, output_folder, things_only=evaluator_type != "coco")

    if evaluator_type.endswith("panoptic_seg"):  # built lazily: only what TEST.*_ON selects
        test = cfg.MODEL.MASK_FORMER.TEST
        builders = (
            (test.PANOPTIC_ON, lambda: CheckedCOCOPanopticEvaluator(dataset_name, output_folder)),
            (test.SEMANTIC_ON, semantic),
            (test.INSTANCE_ON, instance),
        )
        evaluators = [build() for selected, build in builders if selected]
    else:
        evaluators = [semantic() if evaluator_type.endswith("sem_seg") else instance()]

    if not evaluators:
        raise ValueError(
            f"No evaluator selected for '{dataset_name}' (evaluator_type={evaluator_type!r}): "
            "set at least one of MODEL.MASK_FORMER.TEST.{PANOPTIC_ON,SEMANTIC_ON,INSTANCE_ON}"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

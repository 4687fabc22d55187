"""Evaluation: pick detectron2 evaluators per dataset (see ``build_evaluator``), and score the
clustering hierarchy by undersegmentation error (see ``undersegmentation``, ``HierarchyEvaluator``:
the model returns its clusterings, ``segment_ground_truth`` gives the segments they are scored
against)."""
from .build_evaluator import EVALUATOR_TYPES, ThingsCOCOEvaluator, build_evaluator, check_numpy_for_cityscapes
from .checked_evaluators import CheckedCOCOPanopticEvaluator, CheckedSemSegEvaluator
from .hierarchy_evaluator import HierarchyEvaluator
from .segment_ground_truth import ground_truth_kind, load_segment_ground_truth
from .undersegmentation import (
    UndersegmentationCounts,
    achievable_segmentation_accuracy,
    leakage_mask,
    undersegmentation_counts,
    undersegmentation_error,
)

__all__ = [
    "EVALUATOR_TYPES",
    "ThingsCOCOEvaluator",
    "build_evaluator",
    "check_numpy_for_cityscapes",
    "CheckedCOCOPanopticEvaluator",
    "CheckedSemSegEvaluator",
    "HierarchyEvaluator",
    "ground_truth_kind",
    "load_segment_ground_truth",
    "UndersegmentationCounts",
    "achievable_segmentation_accuracy",
    "leakage_mask",
    "undersegmentation_counts",
    "undersegmentation_error",
]

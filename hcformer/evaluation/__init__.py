"""Evaluation: pick detectron2 evaluators per dataset (see ``build_evaluator``), and score the
clustering hierarchy by undersegmentation error (see ``undersegmentation``, ``HierarchyEvaluator``)."""
from .build_evaluator import EVALUATOR_TYPES, ThingsCOCOEvaluator, build_evaluator
from .hierarchy_evaluator import HierarchyEvaluator, query_clustering
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
    "HierarchyEvaluator",
    "query_clustering",
    "UndersegmentationCounts",
    "achievable_segmentation_accuracy",
    "leakage_mask",
    "undersegmentation_counts",
    "undersegmentation_error",
]

"""Pick the training dataset mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""

from typing import Callable, Dict

from detectron2.config import CfgNode

from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .dataset_mappers.evaluation_dataset_mapper import EvaluationDatasetMapper
from .skip_bad_samples import SkipBadSamples

__all__ = ["DATASET_MAPPERS", "build_dataset_mapper"]

# name (cfg.INPUT.DATASET_MAPPER_NAME) -> class built as cls(cfg, is_train=True)
DATASET_MAPPERS: Dict[str, Callable] = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticLSJDatasetMapper,
    "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
}


def build_dataset_mapper(cfg: CfgNode, is_train: bool = True) -> Callable[[Dict], Dict]:
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training, wrapped in
    :class:`SkipBadSamples` when DATALOADER.SKIP_BAD_SAMPLES is True; for evaluation
    :class:`EvaluationDatasetMapper` (detectron2's ``DatasetMapper(cfg, False)``: resize to the
    test size, no labels; never skips a sample)."""
    if not is_train:
        return EvaluationDatasetMapper(cfg, False)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise KeyError(
            f"cfg.INPUT.DATASET_MAPPER_NAME={name!r} is not a known dataset mapper; "
            f"known names: {sorted(DATASET_MAPPERS)}"
        )
    mapper = DATASET_MAPPERS[name](cfg, True)
    return SkipBadSamples(mapper) if cfg.DATALOADER.SKIP_BAD_SAMPLES else mapper

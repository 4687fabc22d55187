"""Pick the training dataset mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""

from typing import Callable, Dict

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper

from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)

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
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` for training; detectron2's
    ``DatasetMapper(cfg, False)`` (resize to the test size, no labels) for evaluation."""
    if not is_train:
        return DatasetMapper(cfg, False)
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise KeyError(
            f"cfg.INPUT.DATASET_MAPPER_NAME={name!r} is not a known dataset mapper; "
            f"known names: {sorted(DATASET_MAPPERS)}"
        )
    return DATASET_MAPPERS[name](cfg, True)

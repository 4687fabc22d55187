"""Dataset registration. Importing this package registers, under ``$DETECTRON2_DATASETS``:

* the synthetic shapes datasets (generated on first use): ``shapes_{train,val}``,
  ``shapes_{train,val}_panoptic_with_sem_seg``, ``shapes_sem_seg_{train,val}``;
* ``coco_2017_{train,val}_panoptic_with_sem_seg`` (Mask2Former convention);
* readable "missing dataset" errors for detectron2's builtin COCO, ADE20K and Cityscapes sets.

Your own datasets are registered from the config (DATASETS.COCO_INSTANCES / COCO_PANOPTIC /
SEM_SEG) by :func:`register_datasets_from_config`, which every entry point runs on its config.
"""

from . import builtin_checks, register_coco_panoptic_annos_semseg, register_shapes
from .catalog_utils import MissingDatasetError
from .register_from_config import DatasetConfigError, register_datasets_from_config
from .register_shapes import register_shapes_datasets, shapes_dataset_names, shapes_metadata
from .shapes_generator import SHAPES_CATEGORIES, ShapesSpec, ensure_shapes_dataset

__all__ = [
    "DatasetConfigError",
    "MissingDatasetError",
    "SHAPES_CATEGORIES",
    "ShapesSpec",
    "ensure_shapes_dataset",
    "register_datasets_from_config",
    "register_shapes_datasets",
    "shapes_dataset_names",
    "shapes_metadata",
]

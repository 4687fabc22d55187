"""Dataset registration. Importing this package registers, under ``$DETECTRON2_DATASETS``:

* ``coco_2017_{train,val}_panoptic_with_sem_seg`` (Mask2Former convention);
* readable "missing dataset" errors for detectron2's builtin COCO, ADE20K and Cityscapes sets.

Your own datasets are registered from the config (DATASETS.COCO_INSTANCES / COCO_PANOPTIC /
SEM_SEG) by :func:`register_datasets_from_config`, which every entry point runs on its config.
Datasets of a package outside hcformer (the synthetic ``shapes_*`` of ``hcformer_shapes``) are
registered by importing it, which every entry point does for a config naming one of them
(:mod:`.dataset_packages`).
"""

from . import builtin_checks, register_coco_panoptic_annos_semseg
from .catalog_utils import MissingDatasetError
from .dataset_packages import DATASET_PACKAGES, import_dataset_packages
from .register_from_config import DatasetConfigError, register_datasets_from_config

__all__ = [
    "DATASET_PACKAGES",
    "DatasetConfigError",
    "MissingDatasetError",
    "import_dataset_packages",
    "register_datasets_from_config",
]

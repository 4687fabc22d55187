"""Dataset registration. Importing this package registers, under ``$DETECTRON2_DATASETS``:

* ``coco_2017_{train,val}_panoptic_with_sem_seg`` (Mask2Former convention);
* readable "missing dataset" errors for detectron2's builtin COCO, ADE20K and Cityscapes sets.

Your own datasets are registered from the config (DATASETS.COCO_INSTANCES / COCO_PANOPTIC /
SEM_SEG) by :func:`register_datasets_from_config`, which every entry point runs on its config.
The synthetic shapes datasets are registered by ``hcformer.data.shapes``.
"""

from . import builtin_checks, register_coco_panoptic_annos_semseg
from .catalog_utils import MissingDatasetError
from .register_from_config import DatasetConfigError, register_datasets_from_config

__all__ = [
    "DatasetConfigError",
    "MissingDatasetError",
    "register_datasets_from_config",
]

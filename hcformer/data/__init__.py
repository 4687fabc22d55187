"""Data side of hcformer. Importing it registers the datasets (see ``datasets``; the synthetic
shapes are a package of their own, ``hcformer_shapes``); mappers turn dataset records into model
inputs."""

from . import datasets  # noqa: F401  (registers datasets)
from .build import DATASET_MAPPERS, build_dataset_mapper
from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .datasets import MissingDatasetError

__all__ = [
    "DATASET_MAPPERS",
    "build_dataset_mapper",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "MissingDatasetError",
]

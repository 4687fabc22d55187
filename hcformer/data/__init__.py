"""Data side of hcformer. Importing it registers the datasets (see ``datasets`` and the synthetic
``shapes``); mappers turn dataset records into model inputs."""

from . import datasets, shapes  # noqa: F401  (registers datasets)
from .build import DATASET_MAPPERS, build_dataset_mapper
from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .datasets import MissingDatasetError
from .shapes import ShapesSpec, ensure_shapes_dataset, register_shapes_datasets, shapes_dataset_names

__all__ = [
    "DATASET_MAPPERS",
    "build_dataset_mapper",
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "MissingDatasetError",
    "ShapesSpec",
    "ensure_shapes_dataset",
    "register_shapes_datasets",
    "shapes_dataset_names",
]

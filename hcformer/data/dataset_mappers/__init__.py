"""Training dataset mappers, one per file; pick one by name with ``hcformer.data.build``."""

from .coco_instance_lsj_dataset_mapper import COCOInstanceLSJDatasetMapper
from .coco_panoptic_lsj_dataset_mapper import COCOPanopticLSJDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = [
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
]

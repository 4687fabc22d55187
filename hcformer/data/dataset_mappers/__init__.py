"""Training dataset mappers, one per file; pick one by name with ``hcformer.data.build``.

All are small subclasses of :class:`SegmentationDatasetMapper` (read → validate → augment → pad
→ targets); the LSJ mappers differ from the MaskFormer ones only in their augmentations (and, for
panoptic, in deriving ``sem_seg`` after them).
"""

from .coco_instance_lsj_dataset_mapper import COCOInstanceLSJDatasetMapper
from .coco_panoptic_lsj_dataset_mapper import COCOPanopticLSJDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper
from .segmentation_dataset_mapper import SegmentationDatasetMapper

__all__ = [
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "SegmentationDatasetMapper",
]

"""The skeleton of every training mapper: read → validate → augment → pad → targets.

:class:`SegmentationDatasetMapper` reads the image, checks the record against it, augments it
and pads it to INPUT.SIZE_DIVISIBILITY. A subclass says which record keys it needs
(``required_keys``), which augmentations it uses (:meth:`build_augmentations`), how its labels
are read and checked (:meth:`read_labels`, before any augmentation, so that a bad file fails
with its name) and how the augmented labels become targets (:meth:`targets`, padded with
:meth:`pad` like the image). Output conventions: see ``mapper_utils``.
"""

import copy
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..checks import check_record_size
from ..image_reading import read_image_file
from .mapper_utils import IMAGE_PAD_VALUE, image_to_tensor

__all__ = ["SegmentationDatasetMapper"]


class SegmentationDatasetMapper:
    """Base of the training mappers; a subclass fills in the steps named in the module doc."""

    required_keys: Tuple[str, ...] = ("file_name",)

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int = 255,
        size_divisibility: int = 0,
        max_image_pixels: int = 0,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            ignore_label: label of unlabeled and padded pixels in ``sem_seg``.
            size_divisibility: pad image and labels to a multiple of it (<= 0: no padding).
            max_image_pixels: refuse larger images (INPUT.MAX_IMAGE_PIXELS; 0: no limit).
            num_classes: refuse labels outside 0..num_classes-1 and the ignore label
                (MODEL.SEM_SEG_HEAD.NUM_CLASSES; None: no check).
        """
        if not is_train:
            raise ValueError(
                f"{type(self).__name__} is a training mapper (is_train=False given); evaluation "
                "uses detectron2's DatasetMapper(cfg, is_train=False)"
            )
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.max_image_pixels = max_image_pixels
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        # the first training dataset's ignore_label (Mask2Former), else the head's IGNORE_VALUE
        ignore_label = None
        if len(cfg.DATASETS.TRAIN):
            ignore_label = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label")
        if ignore_label is None:
            ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        ignore_label = int(ignore_label)
        return {
            "is_train": is_train,
            "augmentations": cls.build_augmentations(cfg, ignore_label),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "max_image_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    @classmethod
    def build_augmentations(cls, cfg: CfgNode, ignore_label: int) -> List[T.Augmentation]:
        raise NotImplementedError

    def __call__(self, dataset_dict: Dict) -> Dict:
        self.check_record(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format, self.max_image_pixels)
        check_record_size(dataset_dict, image)  # also fills in "height" / "width"
        labels = self.read_labels(dataset_dict, image)
        # a "sem_seg" label map is augmented with the image (it drives the category-area crop)
        aug_input = T.AugInput(image, sem_seg=labels.get("sem_seg"))
        transforms = self.augmentations(aug_input)
        dataset_dict["image"] = self.pad(image_to_tensor(aug_input.image), IMAGE_PAD_VALUE)
        dataset_dict.update(self.targets(labels, aug_input, transforms))
        return dataset_dict

    def check_record(self, dataset_dict: Dict) -> None:
        """Refuse a record this mapper cannot map (before anything is read)."""
        missing = [key for key in self.required_keys if key not in dataset_dict]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs {missing} in the dataset record of "
                f"{dataset_dict.get('file_name', '<no file_name>')!r}, which has keys "
                f"{sorted(dataset_dict)}. Is cfg.INPUT.DATASET_MAPPER_NAME right for this dataset?"
            )

    def read_labels(self, dataset_dict: Dict, image: np.ndarray) -> Dict[str, Any]:
        """Read and check the labels of ``dataset_dict`` (popping their keys) for ``image``;
        a ``"sem_seg"`` entry (H x W array) is augmented with the image."""
        raise NotImplementedError

    def targets(
        self, labels: Dict[str, Any], aug_input: T.AugInput, transforms: T.TransformList
    ) -> Dict[str, Any]:
        """The output keys made from ``labels`` once the image is augmented (``aug_input``)."""
        raise NotImplementedError

    def padded_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H, W) rounded up to the next multiple of ``size_divisibility`` (when > 0).

        Mask2Former pads to exactly ``SIZE_DIVISIBILITY`` (it equals the crop size in its
        configs); the next multiple gives the same result there and stays valid for larger images.
        """
        divisibility = self.size_divisibility
        if divisibility <= 0:
            return height, width
        return (
            height + (divisibility - height % divisibility) % divisibility,
            width + (divisibility - width % divisibility) % divisibility,
        )

    def pad(self, tensor: torch.Tensor, value: int) -> torch.Tensor:
        """Pad the bottom/right of ``tensor`` (... x H x W) to :meth:`padded_size`."""
        height, width = tensor.shape[-2:]
        padded_height, padded_width = self.padded_size(height, width)
        if (padded_height, padded_width) == (height, width):
            return tensor
        # F.pad order: left, right, top, bottom
        return F.pad(tensor, [0, padded_width - width, 0, padded_height - height], value=value)

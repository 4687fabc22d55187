"""The evaluation mapper: detectron2's ``DatasetMapper(cfg, is_train=False)`` with strict reading.

It resizes to INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST and gives the model no labels (evaluators read
the ground truth from the dataset files themselves), exactly like detectron2's. The image is
read by :func:`hcformer.data.image_reading.read_image_file`: a missing, corrupt or oversized
file stops the evaluation with its name -- an evaluation never skips a sample, since a score
over a silently smaller set is not comparable.
"""
import copy
from typing import Dict

from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from ..checks import check_record_size
from ..image_reading import read_image_file
from .mapper_utils import image_to_tensor

__all__ = ["EvaluationDatasetMapper"]


class EvaluationDatasetMapper(DatasetMapper):
    """Output keys: image (uint8 C x H x W, resized), height, width (original size), and the
    record's other keys minus ``annotations`` and ``sem_seg_file_name``."""

    @configurable
    def __init__(self, is_train: bool = False, *, max_image_pixels: int = 0, **kwargs):
        if is_train:
            raise ValueError("EvaluationDatasetMapper is for evaluation (is_train=False)")
        super().__init__(is_train, **kwargs)
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = False) -> Dict:
        args = super().from_config(cfg, is_train)
        args["max_image_pixels"] = cfg.INPUT.MAX_IMAGE_PIXELS
        return args

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format, self.max_image_pixels)
        check_record_size(dataset_dict, image)  # also fills in "height" / "width"
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = image_to_tensor(aug_input.image)
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict

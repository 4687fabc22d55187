"""detectron2's semantic and panoptic evaluators, reading the ground truth with the training checks.

detectron2's ``SemSegEvaluator`` opens the ground-truth PNGs itself and trusts them: a class id
the dataset does not have lands in another cell of the confusion matrix (the score is silently
wrong), and a colour PNG fails with a numpy broadcasting error that names no file. panopticapi
likewise scores pixels of a segment id missing from the JSON as nobody's. Here the ground truth
of every image goes through the checks of the training mappers
(:mod:`hcformer.data.checks`, :mod:`hcformer.data.image_reading`) before
it is scored, so a bad file stops the evaluation with its name, its bad ids and what was
expected. As everywhere in evaluation, nothing is skipped.
"""
from typing import Dict, List, Optional

import numpy as np
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from panopticapi.utils import rgb2id

from ..data.checks import check_category_ids, check_panoptic_segments, check_same_size
from ..data.image_reading import read_label_file
from .segment_ground_truth import DatasetRecords

__all__ = ["CheckedSemSegEvaluator", "CheckedCOCOPanopticEvaluator"]


class CheckedSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC) whose ground truth must be a single-channel
    PNG of the prediction's size with ids in 0..len(stuff_classes)-1 or ``ignore_label``.

    Raises (in ``process``):
        BadSampleError: naming the ground-truth PNG (mode, size or ids).
        ValueError: the prediction has not one score map per class of the dataset.
    """

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """Args: inputs with "file_name"; outputs with "sem_seg" (C x H x W scores)."""
        for input, output in zip(inputs, outputs):
            scores = output["sem_seg"]
            if scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"The prediction for {input['file_name']} has {scores.shape[0]} class scores "
                    f"but dataset {self._dataset_name!r} has {self._num_classes} stuff_classes; "
                    "MODEL.SEM_SEG_HEAD.NUM_CLASSES must match the dataset"
                )
            pred = scores.argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)
            gt = self._read_ground_truth(input["file_name"], pred)

            # the ignored pixels go to the extra last row / column of the confusion matrix
            gt[gt == self._ignore_label] = self._num_classes
            self._conf_matrix += self._confusion(pred, gt)
            if getattr(self, "_compute_boundary_iou", False):  # detectron2 after v0.6: boundary IoU too
                self._b_conf_matrix += self._confusion(
                    self._mask_to_boundary(pred.astype(np.uint8)), self._mask_to_boundary(gt.astype(np.uint8))
                )
            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def _confusion(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """(C + 1) x (C + 1) counts of (predicted, true) class pairs of two H x W maps."""
        return np.bincount(
            (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self._conf_matrix.size
        ).reshape(self._conf_matrix.shape)

    def _read_ground_truth(self, file_name: str, pred: np.ndarray) -> np.ndarray:
        """H x W int64 class ids of the image ``file_name``, checked against ``pred`` (H x W)."""
        if file_name not in self.input_file_to_gt_file:
            raise KeyError(f"{file_name} is not an image of dataset {self._dataset_name!r}")
        gt_file = self.input_file_to_gt_file[file_name]
        gt = read_label_file(gt_file, "semantic")
        check_same_size(pred, gt, file_name, gt_file)  # the prediction has the image's size
        check_category_ids(
            np.unique(gt),
            self._num_classes,
            f"semantic ground truth {gt_file}",
            self._ignore_label,
            classes_from=f"the {self._num_classes} stuff_classes of dataset {self._dataset_name!r}",
        )
        return gt.astype(np.int64)


class CheckedCOCOPanopticEvaluator(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` (PQ, SQ, RQ) that first checks each image's ground truth: an RGB
    PNG of the prediction's size whose non-void ids are all segments of the record.

    The ground truth is looked up in the input (``pan_seg_file_name``, ``segments_info``) or,
    when the test mapper dropped it, in the dataset's records by ``file_name``.

    Raises (in ``process``):
        BadSampleError: naming the panoptic PNG (mode, size or unlisted segment ids).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name, output_dir)
        self._records = DatasetRecords(dataset_name)

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for input, output in zip(inputs, outputs):
            self._check_ground_truth(input, tuple(output["panoptic_seg"][0].shape))
        super().process(inputs, outputs)

    def _check_ground_truth(self, input: Dict, prediction_size) -> None:
        record = self._records.with_keys(input, ("pan_seg_file_name", "segments_info"))
        label_file = record["pan_seg_file_name"]
        panoptic_rgb = read_label_file(label_file, "panoptic")
        check_same_size(np.empty(prediction_size), panoptic_rgb, input["file_name"], label_file)
        check_panoptic_segments(rgb2id(panoptic_rgb), record["segments_info"], label_file)


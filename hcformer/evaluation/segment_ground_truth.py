"""Ground-truth segments of a dataset record, as one id map, for undersegmentation scores.

A clustering leaks when one cluster covers two ground-truth *segments*; what a segment is depends
on the annotation the dataset has:

- panoptic: the segments of the ``pan_seg_file_name`` PNG (ids R + 256·G + 256²·B); void (0)
  and crowd segments are ignored;
- semantic: the classes of the ``sem_seg_file_name`` PNG (one segment per class); the
  dataset's ``ignore_label`` is ignored;
- instance: the instances of the record's "annotations" (polygons or RLE) plus one background
  segment (0) for the pixels in no instance, since an instance-only dataset still tells objects
  from their surroundings; crowd instances are ignored.

PNGs are read with the checks of the training mappers: a semantic PNG must be single-channel, a
panoptic PNG RGB with every non-void id listed in ``segments_info`` (when the record has one);
otherwise a ``BadSampleError`` names the file.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from panopticapi.utils import rgb2id

from ..data.checks import check_panoptic_segments
from ..data.dataset_mappers.mask_former_instance_dataset_mapper import annotation_mask
from ..data.image_reading import read_label_file

__all__ = ["GROUND_TRUTH_KEYS", "INSTANCE_IGNORE", "DatasetRecords", "ground_truth_kind", "load_segment_ground_truth"]

# each kind of ground truth and the record key it is read from, the richest first
GROUND_TRUTH_KEYS = {"panoptic": "pan_seg_file_name", "semantic": "sem_seg_file_name", "instance": "annotations"}

# Instance ground truth uses 0 for the background segment, so ignored pixels need another id.
INSTANCE_IGNORE = -1


class DatasetRecords:
    """Where an evaluator finds the ground truth of a model input: in the input itself, or in the
    dataset's record of the same ``file_name`` (read on first need), since test-time mappers may
    drop the ground-truth fields (detectron2's DatasetMapper drops ``sem_seg_file_name``)."""

    def __init__(self, dataset_name: str):
        self._dataset_name = dataset_name
        self._by_file: Optional[Dict[str, Dict]] = None

    def with_keys(self, x: Dict, keys: Sequence[str]) -> Dict:
        """``x`` if it has ``keys``, else its record in the dataset.

        Raises:
            KeyError: neither has them.
        """
        if all(key in x for key in keys):
            return x
        if self._by_file is None:
            self._by_file = {r["file_name"]: r for r in DatasetCatalog.get(self._dataset_name)}
        record = self._by_file.get(x.get("file_name"))
        if record is None or not all(key in record for key in keys):
            raise KeyError(
                f"No {', '.join(keys)} for image {x.get('file_name')!r} in the model input or in "
                f"dataset {self._dataset_name!r}"
            )
        return record


def ground_truth_kind(record: Dict, evaluator_type: str = "") -> str:
    """The richest ground truth the record has: panoptic, then semantic, then instance.

    ``evaluator_type`` (the dataset metadata's) breaks ties in favour of what the dataset is
    evaluated on: a "sem_seg" dataset whose records also have panoptic PNGs is scored by class.

    Raises:
        KeyError: if the record has none of the three annotations.
    """
    if evaluator_type == "sem_seg" and "sem_seg_file_name" in record:
        return "semantic"
    for kind, key in GROUND_TRUTH_KEYS.items():
        if key in record:
            return kind
    raise KeyError(
        f"Record of {record.get('file_name')!r} has no ground truth: expected pan_seg_file_name, "
        f"sem_seg_file_name or annotations, got keys {sorted(record)}"
    )


def load_segment_ground_truth(
    record: Dict, kind: Optional[str] = None, semantic_ignore_label: int = 255
) -> Tuple[np.ndarray, int]:
    """(H, W) int64 segment ids of the record's image at its original size, and the id to ignore.

    Args:
        record: a dataset record (detectron2 standard dataset dict).
        kind: "panoptic", "semantic" or "instance" (see the module docstring); by default
            :func:`ground_truth_kind` of the record.
        semantic_ignore_label: the ignored class of semantic PNGs (the metadata's ``ignore_label``).
    """
    kind = kind or ground_truth_kind(record)
    if kind == "panoptic":
        return _panoptic(record), 0
    if kind == "semantic":
        labels = read_label_file(_require(record, "sem_seg_file_name"), "semantic")
        return labels.astype(np.int64), semantic_ignore_label
    if kind == "instance":
        return _instances(record), INSTANCE_IGNORE
    raise ValueError(f"ground truth kind must be one of {tuple(GROUND_TRUTH_KEYS)}, got {kind!r}")


def _require(record: Dict, key: str):
    if key not in record:
        raise KeyError(f"Record of {record.get('file_name')!r} has no {key}")
    return record[key]


def _panoptic(record: Dict) -> np.ndarray:
    label_file = _require(record, "pan_seg_file_name")
    ids = rgb2id(read_label_file(label_file, "panoptic")).astype(np.int64)
    if "segments_info" in record:  # without it, every id of the PNG counts as a segment
        check_panoptic_segments(ids, record["segments_info"], label_file)
    crowd = [s["id"] for s in record.get("segments_info", []) if s.get("iscrowd", 0)]
    if crowd:
        ids[np.isin(ids, crowd)] = 0  # crowd regions are unlabelled, like void
    return ids


def _instances(record: Dict) -> np.ndarray:
    height, width = _require(record, "height"), _require(record, "width")
    ids = np.zeros((height, width), dtype=np.int64)
    no_transform = T.TransformList([])
    masks = [
        (annotation_mask(a["segmentation"], no_transform, (height, width)), a.get("iscrowd", 0))
        for a in record["annotations"]
    ]
    # Paint the largest first so that a small object lying on a larger one keeps its pixels.
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i][0].sum()))
    for i in order:
        mask, iscrowd = masks[i]
        ids[mask] = INSTANCE_IGNORE if iscrowd else i + 1
    return ids


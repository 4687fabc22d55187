"""The checks that a dataset sample is usable, shared by training and evaluation.

A file or record that cannot be used raises :class:`BadSampleError` naming it and saying what
was expected: the training mappers run these checks before augmenting (training may then skip
the sample, DATALOADER.SKIP_BAD_SAMPLES), and the checked evaluators
(``hcformer.evaluation.checked_evaluators``) run them on the ground truth before scoring it (an
evaluation never skips). The files themselves are read, with their own checks, by
``image_reading``.
"""
from typing import Dict, List, Optional

import numpy as np

__all__ = [
    "BadSampleError",
    "MissingSampleFileError",
    "check_category_ids",
    "check_panoptic_segments",
    "check_record_size",
    "check_rle_sizes",
    "check_same_size",
]


class BadSampleError(ValueError):
    """A dataset file (image or label) that cannot be used; the message names it."""


class MissingSampleFileError(BadSampleError, FileNotFoundError):
    """A file named by a dataset record (or on the command line) does not exist."""


def check_same_size(image: np.ndarray, labels: np.ndarray, image_path: str, label_path: str) -> None:
    """Labels must cover the image pixel for pixel (an EXIF-rotated photo with labels drawn on
    the stored pixels, or labels of another image, would otherwise train on garbage)."""
    if image.shape[:2] != labels.shape[:2]:
        raise BadSampleError(
            f"label {label_path} is {labels.shape[1]} x {labels.shape[0]} but image {image_path} "
            f"is {image.shape[1]} x {image.shape[0]} (width x height, after EXIF rotation)"
        )


def check_record_size(dataset_dict: Dict, image: np.ndarray) -> None:
    """The record's ``width`` / ``height`` (from the annotation JSON) must be the image's size;
    fills them in when absent, as detectron2's ``check_image_size`` does.

    detectron2 raises its ``SizeMismatchError``, which training cannot skip; a record whose
    annotations were made for another size (or image) is a bad sample like any other.
    """
    height, width = image.shape[:2]
    expected = (dataset_dict.get("width", width), dataset_dict.get("height", height))
    if expected != (width, height):
        raise BadSampleError(
            f"image {dataset_dict.get('file_name', '<no file_name>')} is {width} x {height} but "
            f"its dataset record (annotation JSON) says {expected[0]} x {expected[1]} "
            "(width x height, after EXIF rotation); fix the JSON's width/height or the image"
        )
    dataset_dict.setdefault("width", width)
    dataset_dict.setdefault("height", height)


def check_category_ids(
    ids,
    num_classes: Optional[int],
    where: str,
    ignore_label: Optional[int] = None,
    classes_from: str = "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
) -> None:
    """Every contiguous category id in ``ids`` must be a class of the model (0..num_classes-1)
    or ``ignore_label``; ``num_classes`` None skips the check.

    Args:
        classes_from: where ``num_classes`` comes from, for the message.

    Raises:
        BadSampleError: naming ``where`` (the file or record) and the offending ids.
    """
    if num_classes is None:
        return
    bad = sorted({int(i) for i in ids if not 0 <= int(i) < num_classes and int(i) != ignore_label})
    if bad:
        allowed = f"0..{num_classes - 1}" + (f" or {ignore_label} (ignore)" if ignore_label is not None else "")
        raise BadSampleError(
            f"{where}: category ids {bad} are not in {allowed}. The ids must be contiguous ids of "
            f"the dataset metadata, fewer than {classes_from}"
        )


def check_panoptic_segments(panoptic_ids: np.ndarray, segments_info: List[Dict], where: str) -> None:
    """Every non-void id of a panoptic map (H x W ints) must be a segment of ``segments_info``.

    Pixels of an unlisted id have no category: training would silently make them void, and
    panopticapi scores them as belonging to no segment. Listed segments missing from the map are
    allowed (panopticapi counts them as missed).

    Raises:
        BadSampleError: naming ``where`` (the PNG) and the unlisted ids.
    """
    listed = {int(segment["id"]) for segment in segments_info}
    unlisted = sorted(set(np.unique(panoptic_ids).tolist()) - listed - {0})
    if unlisted:
        shown = ", ".join(map(str, unlisted[:10])) + (", ..." if len(unlisted) > 10 else "")
        raise BadSampleError(
            f"{where}: segment ids [{shown}] are in the PNG but not in the record's segments_info "
            f"(which lists {sorted(listed)[:10]}{'...' if len(listed) > 10 else ''}); expected "
            "only listed ids and 0 (void). Do the panoptic JSON and the PNG folder belong together?"
        )


def check_rle_sizes(annotations: List[Dict], image_size, file_name: str) -> None:
    """Every RLE mask must be stored at the image's size (H, W) before augmentation.

    pycocotools would otherwise fail with a bare "Invalid RLE mask representation", or decode a
    mask that does not cover the image.

    Raises:
        BadSampleError: naming the image and both sizes.
    """
    for obj in annotations:
        segmentation = obj.get("segmentation")
        if not isinstance(segmentation, dict):
            continue  # polygons: rasterized at the image size
        size = segmentation.get("size")
        well_formed = isinstance(size, (list, tuple)) and len(size) == 2
        if not well_formed or "counts" not in segmentation:
            raise BadSampleError(
                f"annotations of {file_name}: an RLE segmentation needs 'counts' and 'size' "
                f"[height, width], got keys {sorted(segmentation)} with size {size!r}"
            )
        if tuple(int(v) for v in size) != tuple(image_size):
            raise BadSampleError(
                f"annotations of {file_name}: an RLE mask has size {list(size)} (height, width) "
                f"but the image is {image_size[0]} x {image_size[1]} (height x width); the "
                "annotation belongs to another image or to a resized copy"
            )

"""Dataset records of registered datasets, with errors that name the dataset and its files.

A registered dataset is read when training or evaluation starts. An annotation file that does
not parse, or that uses a category id missing from the dataset's metadata, makes detectron2's
loaders raise a bare ``JSONDecodeError`` / ``KeyError`` without saying which dataset or file, and
their check that the first image exists is an ``AssertionError`` whose message is only the path;
``load_dataset_dicts`` re-raises them as ``DatasetLoadError`` with both.
"""
import itertools
import json
import os
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_only_crowd_annotations,
    print_instances_class_histogram,
)

__all__ = ["DatasetLoadError", "load_dataset_dicts"]


# metadata fields that name a dataset's annotation files (detectron2's COCO / panoptic loaders)
_ANNOTATION_FILE_FIELDS = ("json_file", "panoptic_json")


class DatasetLoadError(ValueError):
    """A registered dataset could not be read; names the dataset and its annotation files."""


def _annotation_files(name: str) -> List[str]:
    metadata = MetadataCatalog.get(name)
    return [metadata.get(f) for f in _ANNOTATION_FILE_FIELDS if metadata.get(f, None)]


def _load_one(name: str) -> List[Dict]:
    files = ", ".join(_annotation_files(name)) or "its annotation files"
    try:
        records = DatasetCatalog.get(name)
    except json.JSONDecodeError as e:
        raise DatasetLoadError(f"dataset {name!r}: {files} is not valid JSON ({e})") from None
    except AssertionError as e:
        # detectron2's panoptic / semantic loaders assert that the first record's files exist,
        # with the path as the whole message
        path = str(e)
        if path and not os.path.exists(path):
            raise DatasetLoadError(f"dataset {name!r}: {files} names {path}, which does not exist") from None
        raise DatasetLoadError(
            f"dataset {name!r}: {files} failed a check of detectron2's loader ({path or 'no message'})"
        ) from None
    except KeyError as e:
        if name not in DatasetCatalog:
            raise
        # detectron2's loaders look category ids up in the metadata's id maps
        raise DatasetLoadError(
            f"dataset {name!r}: {files} refers to key {e} that the dataset metadata does not have "
            "(usually a category_id missing from the 'categories' of the JSON file / "
            "thing_dataset_id_to_contiguous_id)"
        ) from None
    if not records:
        raise DatasetLoadError(f"dataset {name!r} ({files}) has no images")
    return records


def load_dataset_dicts(names: Sequence[str], filter_empty: bool = False) -> List[Dict]:
    """The records of the datasets ``names``, concatenated (detectron2's
    ``get_detection_dataset_dicts`` without proposals or keypoint filtering).

    Args:
        filter_empty: drop images without non-crowd annotations (training of instance models).
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise DatasetLoadError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    per_dataset = [_load_one(name) for name in names]
    records = list(itertools.chain.from_iterable(per_dataset))
    has_instances = "annotations" in records[0]
    if filter_empty and has_instances:
        records = filter_images_with_only_crowd_annotations(records)
    if has_instances:
        try:
            print_instances_class_histogram(records, MetadataCatalog.get(names[0]).thing_classes)
        except AttributeError:  # no thing_classes in the metadata: nothing to print
            pass
    return records

"""Dataset records of registered datasets, with errors that name the dataset and its files.

A registered dataset is read when training or evaluation starts. An annotation file that does
not parse, or that uses a category id missing from the dataset's metadata, makes detectron2's
loaders raise a bare ``JSONDecodeError`` / ``KeyError`` without saying which dataset or file, and
their check that the first image exists is an ``AssertionError`` whose message is only the path;
a JSON of the wrong structure (a list at the top level, a missing or empty ``annotations`` list)
gives a bare ``TypeError`` or a misleading message. ``load_dataset_dicts`` re-raises them as
``DatasetLoadError`` naming the dataset, the JSON file and what it lacks, and refuses a training
set that is empty after filtering instead of letting detectron2's sampler fail on size 0.

The structure checks of annotation JSONs (:func:`read_annotation_json`, :func:`require_entries`) are
the ones every reader of such files shares: the config registration, the COCO-panoptic reader
and ``datasets/prepare_panoptic_from_instances.py``.
"""
import itertools
import json
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_only_crowd_annotations,
    print_instances_class_histogram,
)

__all__ = ["DatasetLoadError", "load_dataset_dicts", "read_annotation_json", "require_entries"]


class DatasetLoadError(ValueError):
    """A registered dataset could not be read; names the dataset and its annotation files."""


# what detectron2's loaders expect of each annotation file: (metadata field naming the file,
# format for messages, top-level lists that must be present, the list with one entry per image,
# keys every entry of that list needs)
_JSON_FORMATS = {
    "panoptic": ("panoptic_json", "COCO panoptic", ("annotations", "categories"), "annotations",
                 ("image_id", "file_name", "segments_info")),
    "instances": ("json_file", "COCO instances", ("images", "categories"), "images",
                  ("id", "file_name", "height", "width")),
}


def _annotation_file(name: str):
    """(path, kind) of the annotation JSON the loader of ``name`` reads, or (None, None).

    A panoptic dataset also names an instances JSON (``json_file``) for its evaluator; its loader
    reads only ``panoptic_json``, so only that one can be the cause of a loading error.
    """
    metadata = MetadataCatalog.get(name)
    for kind in ("panoptic", "instances"):
        path = metadata.get(_JSON_FORMATS[kind][0], None)
        if path:
            return path, kind
    return None, None


def read_annotation_json(path: str, kind: str) -> Dict:
    """The content of the annotation JSON ``path`` of ``kind`` ("panoptic" or "instances"), its
    structure checked as detectron2's loaders need it.

    Raises:
        DatasetLoadError: naming the file and what is wrong with it.
    """
    _, format_name, required, per_image, entry_keys = _JSON_FORMATS[kind]
    lists = ", ".join(map(repr, required))
    expected = f"expected {format_name} format: an object with lists {lists}"
    try:
        with open(path) as f:
            content = json.load(f)
    except FileNotFoundError:
        raise DatasetLoadError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetLoadError(f"{path} is not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLoadError(f"{path} cannot be read ({e})") from None
    if not isinstance(content, dict):
        raise DatasetLoadError(f"{path} holds a JSON {type(content).__name__} at the top level; {expected}")
    for key in required:
        if key not in content:
            raise DatasetLoadError(f"{path} has no {key!r} key (its keys: {sorted(content)}); {expected}")
    for key in ("images", "annotations", "categories"):
        if key in content and not isinstance(content[key], list):
            raise DatasetLoadError(f"{path}: {key!r} is a JSON {type(content[key]).__name__}; {expected}")
    if not content[per_image]:
        raise DatasetLoadError(f"{path} has an empty {per_image!r} list: the dataset has no images")
    require_entries(path, per_image, content[per_image], entry_keys)
    return content


def _json_problem(path: Optional[str], kind: str) -> Optional[str]:
    """What :func:`read_annotation_json` finds wrong with ``path`` (None: nothing, or no file)."""
    try:
        if path:
            read_annotation_json(path, kind)
    except DatasetLoadError as e:
        return str(e)
    return None


def require_entries(path: str, list_name: str, entries: List, keys, unique_ids: bool = False) -> None:
    """Every entry of the list ``list_name`` of the JSON ``path`` must be an object with ``keys``
    (and, with ``unique_ids``, an "id" no other has).

    Raises:
        DatasetLoadError: naming the file, the list and the first bad entry.
    """
    for i, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DatasetLoadError(
                f"{path}: entry {i} of {list_name!r} lacks {missing} ({str(entry)[:100]}); every "
                f"entry needs {list(keys)}"
            )
    if unique_ids:
        seen = set()
        for entry in entries:
            if entry["id"] in seen:
                raise DatasetLoadError(f"{path}: two entries of {list_name!r} have the id {entry['id']!r}")
            seen.add(entry["id"])


def _load_one(name: str) -> List[Dict]:
    path, kind = _annotation_file(name)
    files = path or "its annotation files"
    try:
        records = DatasetCatalog.get(name)
    except (json.JSONDecodeError, AssertionError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, KeyError) and name not in DatasetCatalog:
            raise
        # a JSON of the wrong structure makes detectron2's loaders fail with a TypeError, a
        # KeyError of a list name or "No images found": say what the file lacks instead
        problem = _json_problem(path, kind)
        if problem:
            raise DatasetLoadError(f"dataset {name!r}: {problem}") from None
        if isinstance(e, AssertionError):
            # detectron2's panoptic / semantic loaders assert that the first record's files
            # exist, with the path as the whole message
            message = str(e)
            if message and not os.path.exists(message):
                raise DatasetLoadError(
                    f"dataset {name!r}: {files} names {message}, which does not exist"
                ) from None
            raise DatasetLoadError(
                f"dataset {name!r}: {files} failed a check of detectron2's loader "
                f"({message or 'no message'})"
            ) from None
        if isinstance(e, KeyError):
            reason = e.args[0] if e.args else ""
            if isinstance(reason, str) and " " in reason:
                # detectron2's own sentence ("Encountered category_id=77 but ..."), not a key
                raise DatasetLoadError(f"dataset {name!r}: {files}: {reason}") from None
            # detectron2's loaders look category ids up in the metadata's id maps
            raise DatasetLoadError(
                f"dataset {name!r}: {files} refers to key {e} that the dataset metadata does not "
                "have (usually a category_id missing from the 'categories' of the JSON file / "
                "thing_dataset_id_to_contiguous_id)"
            ) from None
        raise  # a TypeError / AttributeError we cannot explain: keep the traceback
    if not records:
        problem = _json_problem(path, kind)
        raise DatasetLoadError(f"dataset {name!r}: " + (problem or f"{files} lists no images"))
    return records


def load_dataset_dicts(names: Sequence[str], filter_empty: bool = False) -> List[Dict]:
    """The records of the datasets ``names``, concatenated (detectron2's
    ``get_detection_dataset_dicts`` without proposals or keypoint filtering).

    Args:
        filter_empty: drop images without non-crowd annotations (training of instance models).
    """
    if isinstance(names, str):  # one name, as detectron2's get_detection_dataset_dicts takes
        names = [names]
    if not names:
        raise DatasetLoadError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    per_dataset = [_load_one(name) for name in names]
    records = list(itertools.chain.from_iterable(per_dataset))
    has_instances = "annotations" in records[0]
    if filter_empty and has_instances:
        records = filter_images_with_only_crowd_annotations(records)
        if not records:
            # else detectron2's sampler fails with "expects a positive int. Got 0"
            raise DatasetLoadError(
                f"dataset(s) {list(names)}: none of the {sum(map(len, per_dataset))} images has a "
                "non-crowd instance annotation, so DATALOADER.FILTER_EMPTY_ANNOTATIONS dropped "
                "them all. detectron2's COCO loader also drops annotations whose segmentation is "
                "not a valid polygon (at least 3 points) or RLE; see its warnings above"
            )
    if has_instances:
        try:
            print_instances_class_histogram(records, MetadataCatalog.get(names[0]).thing_classes)
        except AttributeError:  # no thing_classes in the metadata: nothing to print
            pass
    return records

"""Datasets registered from the config: your own data without writing Python.

Three config keys, each a list of entries (lists of strings), registered by
:func:`register_datasets_from_config` in every process before anything is built (it is called by
``hcformer.engine.config_validation.validate_config``, which ``train_net.py`` — every rank —, the
demo and the tools run on their config):

==========================  ====================================================================
``DATASETS.COCO_INSTANCES``  ``[name, json_file, image_root]``: a COCO instance JSON (polygons or
                             RLE), as annotation tools export it; detectron2's
                             ``register_coco_instances``, evaluator "coco" (mask AP)
``DATASETS.COCO_PANOPTIC``   ``[name, panoptic_json, panoptic_png_root, image_root(, semantic_png_root)]``:
                             COCO panoptic (e.g. from ``datasets/prepare_panoptic_from_instances.py``);
                             evaluator "coco_panoptic_seg" (PQ, mIoU, mask AP). Without the
                             semantic PNGs they are derived on first use, as is the instance JSON
                             for mask AP (:mod:`.coco_panoptic_files`)
``DATASETS.SEM_SEG``         ``[name, image_dir, label_dir, classes_txt]``: images and label PNGs of
                             the same names; a label is the line number (0-based) of its class in
                             ``classes_txt``, 255 = ignore; evaluator "sem_seg" (mIoU)
==========================  ====================================================================

Category ids of any kind (0- or 1-based, with gaps, a category without annotations such as the
``_background_`` some tools export) become contiguous ids the standard detectron2 way: the
categories sorted by id; evaluation reports the dataset's own ids and names. The class names are
read when the dataset is registered, so MODEL.SEM_SEG_HEAD.NUM_CLASSES can be checked against
them (or taken from them with -1) before anything is built.

Relative paths are taken from the working directory. Registering a name again with the same
files does nothing; with other files, or a name detectron2 or hcformer registered already, is an
error: a dataset name always means one set of files.
"""

import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..dataset_loading import DatasetLoadError, read_annotation_json, require_entries
from .catalog_utils import MissingDatasetError, register_sem_seg_folders
from .coco_panoptic_files import (
    derived_instances_json,
    derived_semantic_root,
    ensure_derived_files,
    load_panoptic_records,
    panoptic_metadata,
    read_panoptic_json,
)
from .dataset_packages import import_dataset_packages

__all__ = [
    "DatasetConfigError",
    "CONFIG_DATASET_KEYS",
    "register_coco_instances_from_files",
    "register_coco_panoptic_from_files",
    "register_sem_seg_from_files",
    "register_datasets_from_config",
]


class DatasetConfigError(ValueError):
    """A DATASETS.COCO_INSTANCES / COCO_PANOPTIC / SEM_SEG entry that cannot be registered."""


def _require(path: str, kind: str, role: str, where: str) -> str:
    """``path`` made absolute; it must be a ``kind`` ("file" or "folder")."""
    exists = os.path.isfile(path) if kind == "file" else os.path.isdir(path)
    if not exists:
        found = "" if not os.path.exists(path) else f" (it is a {'folder' if kind == 'file' else 'file'})"
        raise MissingDatasetError(
            f"{where}: the {role} {path!r} is not an existing {kind}{found} (relative paths are "
            f"taken from the working directory, {os.getcwd()})"
        )
    return os.path.abspath(path)


def _claim_name(name: str, entry: List[str]) -> bool:
    """True if ``name`` must be registered now; False if ``entry`` registered it already.

    Raises:
        DatasetConfigError: ``name`` is registered with other files or by someone else.
    """
    if name not in DatasetCatalog:
        return True
    registered = MetadataCatalog.get(name).get("config_entry", None)
    if registered == entry:
        return False
    what = f"from the config as {registered}" if registered else "otherwise (a builtin dataset or one of Python code)"
    raise DatasetConfigError(
        f"Dataset name {name!r} of {entry[0]} is already registered {what}; {entry[1:]} would give "
        "it other files. Choose another name"
    )


def _classes_from_instances_json(json_file: str, where: str) -> List[Dict]:
    """The "categories" of a COCO instance JSON, checked: entries with an id and a name."""
    try:
        categories = read_annotation_json(json_file, "instances")["categories"]  # every loader's checks
        if not categories:
            raise DatasetLoadError(f"{json_file} has an empty 'categories' list")
        require_entries(json_file, "categories", categories, ("id", "name"), unique_ids=True)
    except DatasetLoadError as e:
        raise DatasetConfigError(f"{where}: {e}") from None
    return sorted(categories, key=lambda c: c["id"])


def register_coco_instances_from_files(name: str, json_file: str, image_root: str, where: str = "") -> None:
    """Register a COCO instance dataset; class names are read from ``json_file`` now."""
    where = where or f"dataset {name!r}"
    entry = [
        "DATASETS.COCO_INSTANCES",
        _require(json_file, "file", "json_file", where),
        _require(image_root, "folder", "image_root", where),
    ]
    if not _claim_name(name, entry):
        return
    categories = _classes_from_instances_json(entry[1], where)
    # what detectron2's load_coco_json sets when it reads the file (same values), known now
    register_coco_instances(
        name,
        {
            "thing_classes": [c["name"] for c in categories],
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
            "config_entry": entry,
        },
        entry[1],
        entry[2],
    )


def register_coco_panoptic_from_files(
    name: str,
    panoptic_json: str,
    panoptic_root: str,
    image_root: str,
    semantic_root: Optional[str] = None,
    where: str = "",
) -> None:
    """Register a COCO-panoptic dataset; without ``semantic_root`` the semantic PNGs are derived
    on first use (:func:`~.coco_panoptic_files.ensure_derived_files`), and the instance JSON for
    mask AP always is."""
    where = where or f"dataset {name!r}"
    entry = [
        "DATASETS.COCO_PANOPTIC",
        _require(panoptic_json, "file", "panoptic_json", where),
        _require(panoptic_root, "folder", "panoptic_png_root", where),
        _require(image_root, "folder", "image_root", where),
    ]
    if semantic_root is not None:
        entry.append(_require(semantic_root, "folder", "semantic_png_root", where))
    if not _claim_name(name, entry):
        return
    panoptic_json, panoptic_root, image_root = entry[1:4]
    try:
        categories = read_panoptic_json(panoptic_json)["categories"]
    except ValueError as e:
        raise DatasetConfigError(f"{where}: {e}") from None
    semantic_root = entry[4] if semantic_root is not None else derived_semantic_root(panoptic_root)

    def load() -> List[Dict]:
        ensure_derived_files(panoptic_json, panoptic_root, semantic_pngs=len(entry) == 4)
        return load_panoptic_records(panoptic_json, panoptic_root, image_root, semantic_root)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        panoptic_json=panoptic_json,
        panoptic_root=panoptic_root,
        image_root=image_root,
        sem_seg_root=semantic_root,
        json_file=derived_instances_json(panoptic_root),  # mask AP; made by load()
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        config_entry=entry,
        **panoptic_metadata(categories),
    )


def _read_classes(classes_txt: str, where: str) -> List[str]:
    with open(classes_txt) as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing empty lines
    names = [line.strip() for line in lines]
    problems = []
    if not names:
        problems.append("it lists no class")
    if "" in names:
        problems.append(f"line {names.index('') + 1} is empty")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1 and n)
    if duplicates:
        problems.append(f"{duplicates} appear more than once")
    if len(names) > 255:
        problems.append(f"it lists {len(names)} classes; at most 255 fit (255 is the ignore label)")
    if problems:
        raise DatasetConfigError(
            f"{where}: classes_txt {classes_txt}: {'; '.join(problems)}. Expected one class name "
            "per line; a label PNG value is the line number, counted from 0"
        )
    return names


def register_sem_seg_from_files(
    name: str, image_dir: str, label_dir: str, classes_txt: str, where: str = ""
) -> None:
    """Register a semantic segmentation dataset of image / label PNG pairs of the same names."""
    where = where or f"dataset {name!r}"
    entry = [
        "DATASETS.SEM_SEG",
        _require(image_dir, "folder", "image_dir", where),
        _require(label_dir, "folder", "label_dir", where),
        _require(classes_txt, "file", "classes_txt", where),
    ]
    if not _claim_name(name, entry):
        return
    classes = _read_classes(entry[3], where)
    register_sem_seg_folders(name, entry[1], entry[2], stuff_classes=classes, config_entry=entry)


# config key: (entry fields, how many of them may be left out at the end, registration)
CONFIG_DATASET_KEYS: Dict[str, Any] = {
    "COCO_INSTANCES": (("name", "json_file", "image_root"), 0, register_coco_instances_from_files),
    "COCO_PANOPTIC": (
        ("name", "panoptic_json", "panoptic_png_root", "image_root", "semantic_png_root"),
        1,
        register_coco_panoptic_from_files,
    ),
    "SEM_SEG": (("name", "image_dir", "label_dir", "classes_txt"), 0, register_sem_seg_from_files),
}


def _check_entry(key: str, index: int, entry: Any, fields: Sequence[str], optional: int) -> None:
    lengths = range(len(fields) - optional, len(fields) + 1)
    well_formed = (
        isinstance(entry, (list, tuple))
        and len(entry) in lengths
        and all(isinstance(value, str) and value for value in entry)
    )
    if not well_formed:
        shown = ", ".join(fields[: len(fields) - optional])
        shown += "".join(f"(, {f})" for f in fields[len(fields) - optional :])
        counts = " or ".join(str(n) for n in lengths)
        raise DatasetConfigError(
            f"DATASETS.{key}[{index}] = {entry!r}: expected a list of {counts} non-empty strings "
            f"[{shown}], e.g. DATASETS.{key} '[[\"mine_train\", ...]]'"
        )


def register_datasets_from_config(cfg) -> None:
    """Register every dataset of DATASETS.COCO_INSTANCES / COCO_PANOPTIC / SEM_SEG. Safe to call
    again with the same config (each process, each tool).

    First, the packages registering the DATASETS.TRAIN / TEST names of their own (the synthetic
    ``shapes_*`` of ``hcformer_shapes``) are imported: see :mod:`.dataset_packages`.

    Raises:
        DatasetConfigError: an entry of the wrong form, a name registered with other files, a
            class list that cannot be read (names the key, the entry and the file).
        MissingDatasetError: a file or folder of an entry does not exist.
    """
    import_dataset_packages([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    for key, (fields, optional, _) in CONFIG_DATASET_KEYS.items():
        entries = cfg.DATASETS[key]
        if not isinstance(entries, (list, tuple)):
            raise DatasetConfigError(f"DATASETS.{key} = {entries!r}: expected a list of lists")
        for index, entry in enumerate(entries):
            _check_entry(key, index, entry, fields, optional)
    for key, (_, _, register) in CONFIG_DATASET_KEYS.items():
        for index, entry in enumerate(cfg.DATASETS[key]):
            register(*entry, where=f"DATASETS.{key}[{index}] ({entry[0]!r})")

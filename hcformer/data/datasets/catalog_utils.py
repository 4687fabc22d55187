"""Small helpers around detectron2's DatasetCatalog / MetadataCatalog.

They let us reuse detectron2's own registration functions (``register_coco_instances``,
``register_coco_panoptic``, builtin datasets) and add behaviour around their loaders: generate a
synthetic dataset on first use, or fail with a readable message when a real dataset is missing.
"""

import os
from typing import Callable, Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "MissingDatasetError",
    "require_paths",
    "wrap_dataset_loader",
    "run_before_loading",
    "unregister_dataset",
]

Loader = Callable[[], List[Dict]]

_README_HINT = "See datasets/README.md of the hcformer repository for the expected layout."


class MissingDatasetError(FileNotFoundError):
    """A registered dataset's files are not on disk."""


def require_paths(dataset_name: str, paths: Sequence[str], how_to_prepare: str = "") -> None:
    """Raise :class:`MissingDatasetError` naming the first missing path of ``dataset_name``.

    Args:
        paths: files or directories the dataset's loader needs.
        how_to_prepare: a sentence telling the user how to obtain the missing files.
    """
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    raise MissingDatasetError(
        f"Dataset '{dataset_name}' is not available: expected "
        f"{os.path.abspath(missing[0])!r} to exist"
        + (f" (and {len(missing) - 1} more missing path(s))" if len(missing) > 1 else "")
        + f". Datasets are looked up under $DETECTRON2_DATASETS (now {root!r}). "
        + (how_to_prepare + " " if how_to_prepare else "")
        + _README_HINT
    )


def wrap_dataset_loader(name: str, wrap: Callable[[Loader], Loader]) -> None:
    """Replace the loader registered as ``name`` with ``wrap(loader)``; metadata is untouched."""
    loader = DatasetCatalog[name]  # the registered function itself, not its result
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, wrap(loader))


def run_before_loading(name: str, step: Callable[[], None]) -> None:
    """Make the loader of ``name`` call ``step()`` first (a check, or lazy generation)."""

    def wrap(loader: Loader) -> Loader:
        def load() -> List[Dict]:
            step()
            return loader()

        return load

    wrap_dataset_loader(name, wrap)


def unregister_dataset(name: str) -> None:
    """Forget ``name`` in both catalogs (no-op for unknown names)."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)

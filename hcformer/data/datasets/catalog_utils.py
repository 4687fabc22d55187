"""Small helpers around detectron2's DatasetCatalog / MetadataCatalog.

They let us reuse detectron2's own registration functions (``register_coco_instances``,
``register_coco_panoptic``, builtin datasets) and add behaviour around their loaders: generate a
synthetic dataset on first use, or fail with a readable message when a real dataset is missing.
``register_sem_seg_folders`` registers a folder of images and one of label PNGs (the config's
DATASETS.SEM_SEG and the synthetic shapes) on detectron2's ``load_sem_seg``.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from hcformer_deploy.image_files import IMAGE_EXTENSIONS

from ..dataset_loading import DatasetLoadError

__all__ = [
    "MissingDatasetError",
    "require_paths",
    "require_matching_sem_seg_files",
    "register_sem_seg_folders",
    "wrap_dataset_loader",
    "run_before_loading",
    "unregister_dataset",
]

Loader = Callable[[], List[Dict]]

_README_HINT = "See datasets/README.md of the hcformer repository for the expected layout."


class MissingDatasetError(FileNotFoundError):
    """A registered dataset's files are not on disk."""


def require_paths(dataset_name: str, paths: Sequence[str], how_to_prepare: str) -> None:
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
        + f"{how_to_prepare} {_README_HINT}"
    )


def _stems(folder: str, ext: str) -> Dict[str, str]:
    """{file name without extension: file name} of the files in ``folder`` ending in ``ext``."""
    return {f[: -len(ext)]: f for f in os.listdir(folder) if f.endswith(ext)}


def require_matching_sem_seg_files(
    dataset_name: str, image_root: str, gt_root: str, image_ext: str = "jpg", gt_ext: str = "png"
) -> None:
    """Every image in ``image_root`` must have a label in ``gt_root`` and vice versa.

    detectron2's ``load_sem_seg`` only warns when the counts differ and goes on with the files
    that have both, so an evaluation would silently score fewer images (and training would lose
    some). Matching is by file name without extension, as there.

    Raises:
        DatasetLoadError: naming both folders and (some of) the unmatched files.
    """
    images, labels = _stems(image_root, image_ext), _stems(gt_root, gt_ext)
    no_label = sorted(images[s] for s in set(images) - set(labels))
    no_image = sorted(labels[s] for s in set(labels) - set(images))
    if not no_label and not no_image:
        return

    def shown(files: List[str]) -> str:
        return ", ".join(files[:10]) + (f", ... ({len(files)} in all)" if len(files) > 10 else "")

    problems = []
    if no_label:
        problems.append(
            f"{len(no_label)} image(s) in {image_root} have no label PNG: {shown(no_label)}"
        )
    if no_image:
        problems.append(
            f"{len(no_image)} label file(s) in {gt_root} have no image: {shown(no_image)}"
        )
    raise DatasetLoadError(
        f"dataset {dataset_name!r}: images and labels do not match; "
        + "; ".join(problems)
        + f". Every {image_ext} image needs a {gt_ext} label of the same name and vice versa "
        "(detectron2 would silently use only the matching pairs)"
    )


def _single_image_extension(dataset_name: str, image_dir: str) -> str:
    """The one image extension used in ``image_dir`` (e.g. "jpg")."""
    extensions = (os.path.splitext(f)[1] for f in os.listdir(image_dir))
    found = sorted({ext for ext in extensions if ext.lower() in IMAGE_EXTENSIONS})
    if len(found) != 1:
        raise DatasetLoadError(
            f"dataset {dataset_name!r}: image_dir {image_dir} holds "
            + (f"images with several extensions {found}" if found else "no image")
            + f"; expected images of one extension among {list(IMAGE_EXTENSIONS)}"
        )
    return found[0][1:]


def register_sem_seg_folders(
    name: str, image_root: str, sem_seg_root: str, image_ext: Optional[str] = None, **metadata
) -> None:
    """Register images and label PNGs of the same names, evaluator "sem_seg" (ignore label 255):
    detectron2's ``load_sem_seg`` once ``require_matching_sem_seg_files`` has found every pair.

    Args:
        image_ext: of the images; None: the one image extension in ``image_root`` when loading.
        metadata: more fields of the dataset's metadata (``stuff_classes``, ...).
    """

    def load() -> List[Dict]:
        ext = image_ext or _single_image_extension(name, image_root)
        require_matching_sem_seg_files(name, image_root, sem_seg_root, ext, "png")
        return load_sem_seg(sem_seg_root, image_root, gt_ext="png", image_ext=ext)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root, sem_seg_root=sem_seg_root, evaluator_type="sem_seg", ignore_label=255, **metadata
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

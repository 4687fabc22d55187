"""Datasets registered by a package outside hcformer, imported when a dataset name asks for it.

hcformer registers its own datasets when it is imported, and those of DATASETS.COCO_INSTANCES /
COCO_PANOPTIC / SEM_SEG from the config (``register_from_config``). A package next to it may
register more, such as the synthetic shapes of ``hcformer_shapes``; hcformer never imports it on
its own. The rule that brings it in: a dataset name starting with a prefix of
``DATASET_PACKAGES`` is registered by importing that prefix's package.

:func:`register_datasets_from_config` applies the rule to DATASETS.TRAIN and DATASETS.TEST, so
every entry point (``train_net.py`` in every process, the demo, the tools) gets the package of a
config naming, say, ``shapes_train_panoptic_with_sem_seg``, whether the name comes from the file,
one of its ``_BASE_`` files or an override; the tools taking a ``--dataset`` name apply it to
that name too. Python code that uses the names without a config imports the package itself.
"""
import importlib
from typing import Dict, Iterable, List

__all__ = ["DATASET_PACKAGES", "import_dataset_packages"]

# dataset name prefix: the package whose import registers the names starting with it
DATASET_PACKAGES: Dict[str, str] = {
    # shapes_{train,val}, shapes_{train,val}_panoptic_with_sem_seg, shapes_sem_seg_{train,val}
    "shapes_": "hcformer_shapes",
}


def import_dataset_packages(names: Iterable[str]) -> List[str]:
    """Import the package registering each of ``names`` that ``DATASET_PACKAGES`` names by its
    prefix; return those packages. A name of no prefix is left alone (it is hcformer's, the
    config's, or not registered at all, which the caller reports). Importing a package again
    does nothing, so this may run for every config of a process."""
    packages = sorted(
        {package for name in names for prefix, package in DATASET_PACKAGES.items() if name.startswith(prefix)}
    )
    for package in packages:
        importlib.import_module(package)
    return packages

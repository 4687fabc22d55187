"""Readable errors for the real datasets that detectron2 itself registers.

detectron2 (imported by ``detectron2.data``) already registers, under ``$DETECTRON2_DATASETS``:
``coco_2017_{train,val}`` (instances), ``ade20k_sem_seg_{train,val}`` (150 classes, reading
``ADEChallengeData2016/annotations_detectron2``) and ``cityscapes_fine_{sem_seg,instance_seg}_*``.
We keep those registrations and only make their loaders check the expected folders first, so a
missing dataset fails with one message naming the folder and how to prepare it, instead of an
assertion deep inside a loader.
"""

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog_utils import require_paths, run_before_loading

__all__ = ["add_builtin_dataset_checks"]

_HOW_TO_PREPARE = {
    "coco_2017": "Download COCO 2017 images and annotations into coco/.",
    "ade20k_sem_seg": (
        "Download ADEChallengeData2016 and run datasets/prepare_ade20k_sem_seg.py to create "
        "annotations_detectron2/."
    ),
    "cityscapes_fine": (
        "Download Cityscapes leftImg8bit and gtFine into cityscapes/ and run cityscapesscripts' "
        "createTrainIdLabelImgs (and createTrainIdInstanceImgs for instances)."
    ),
}

# dataset name: metadata keys holding the paths its loader reads
_CHECKED_DATASETS = {
    "coco_2017_train": ("image_root", "json_file"),
    "coco_2017_val": ("image_root", "json_file"),
    "ade20k_sem_seg_train": ("image_root", "sem_seg_root"),
    "ade20k_sem_seg_val": ("image_root", "sem_seg_root"),
    "cityscapes_fine_sem_seg_train": ("image_dir", "gt_dir"),
    "cityscapes_fine_sem_seg_val": ("image_dir", "gt_dir"),
    "cityscapes_fine_instance_seg_train": ("image_dir", "gt_dir"),
    "cityscapes_fine_instance_seg_val": ("image_dir", "gt_dir"),
}


def add_builtin_dataset_checks() -> None:
    """Make the loaders of detectron2's builtin datasets above check their paths first."""
    for name, keys in _CHECKED_DATASETS.items():
        if name not in DatasetCatalog:  # an older/newer detectron2 without this dataset
            continue
        metadata = MetadataCatalog.get(name)
        paths = [metadata.get(key) for key in keys if metadata.get(key)]
        hint = next(text for prefix, text in _HOW_TO_PREPARE.items() if name.startswith(prefix))
        run_before_loading(
            name, lambda name=name, paths=paths, hint=hint: require_paths(name, paths, hint)
        )


add_builtin_dataset_checks()

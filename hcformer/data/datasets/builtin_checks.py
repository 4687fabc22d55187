"""Readable errors for the real datasets that detectron2 itself registers.

detectron2 (imported by ``detectron2.data``) already registers, under ``$DETECTRON2_DATASETS``:
``coco_2017_{train,val}`` (instances), ``coco_2017_{train,val}_panoptic`` (COCO panoptic),
``coco_2017_{train,val}_panoptic_separated`` (Panoptic FPN's instances + stuff),
``ade20k_sem_seg_{train,val}`` (150 classes, reading
``ADEChallengeData2016/annotations_detectron2``) and
``cityscapes_fine_{sem_seg,instance_seg,panoptic}_{train,val}``. We keep those registrations and
only make their loaders check the expected folders first, so a missing dataset fails with one
message naming the folder and how to prepare it, instead of an assertion deep inside a loader.
ADE20K's images and labels must also match one to one (detectron2's ``load_sem_seg`` would
silently use only the matching pairs).
"""

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog_utils import require_matching_sem_seg_files, require_paths, run_before_loading

__all__ = ["add_builtin_dataset_checks"]

_COCO = "Download COCO 2017 images and annotations into coco/"
_CITYSCAPES = (
    "Download Cityscapes leftImg8bit and gtFine into cityscapes/ and run cityscapesscripts' "
)

# (dataset names, metadata keys holding the paths their loader reads, how to prepare them)
_CHECKED_DATASETS = [
    (("coco_2017_train", "coco_2017_val"), ("image_root", "json_file"), _COCO + "."),
    (
        ("coco_2017_train_panoptic", "coco_2017_val_panoptic"),
        ("image_root", "panoptic_root", "panoptic_json"),
        _COCO + ", and unzip the panoptic PNGs into coco/panoptic_{train,val}2017/.",
    ),
    (
        # the instances json, plus stuff-only semantic PNGs made from the panoptic annotations
        ("coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_separated"),
        ("image_root", "json_file", "sem_seg_root"),
        _COCO + " and run detectron2's datasets/prepare_panoptic_fpn.py to create "
        "coco/panoptic_stuff_{train,val}2017/.",
    ),
    (
        ("ade20k_sem_seg_train", "ade20k_sem_seg_val"),
        ("image_root", "sem_seg_root"),
        "Download ADEChallengeData2016 and run datasets/prepare_ade20k_sem_seg.py to create "
        "annotations_detectron2/.",
    ),
    (
        (
            "cityscapes_fine_sem_seg_train",
            "cityscapes_fine_sem_seg_val",
            "cityscapes_fine_instance_seg_train",
            "cityscapes_fine_instance_seg_val",
        ),
        ("image_dir", "gt_dir"),
        _CITYSCAPES + "createTrainIdLabelImgs (and createTrainIdInstanceImgs for instances).",
    ),
    (
        # reads the panoptic PNGs + json and, per image, gtFine/<split>'s labelTrainIds
        ("cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val"),
        ("image_root", "panoptic_root", "panoptic_json", "gt_dir"),
        _CITYSCAPES + "createTrainIdLabelImgs and createPanopticImgs.",
    ),
]


# datasets read by detectron2's load_sem_seg (jpg images, png labels)
_SEM_SEG_DATASETS = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")


def add_builtin_dataset_checks() -> None:
    """Make the loaders of detectron2's builtin datasets above check their paths first."""
    for names, keys, hint in _CHECKED_DATASETS:
        for name in names:
            if name not in DatasetCatalog:  # an older/newer detectron2 without this dataset
                continue
            metadata = MetadataCatalog.get(name)
            paths = [metadata.get(key) for key in keys if metadata.get(key)]

            def check(name=name, paths=paths, hint=hint, metadata=metadata):
                require_paths(name, paths, hint)
                if name in _SEM_SEG_DATASETS:
                    require_matching_sem_seg_files(name, metadata.image_root, metadata.sem_seg_root)

            run_before_loading(name, check)


add_builtin_dataset_checks()

"""Broken datasets as a whole: skipping bad samples in a real training loader, semantic folders
whose images and labels do not match, annotation JSON of the wrong structure, RLE masks of the
wrong size and 32-bit images."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetFromList, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_coco_panoptic
from PIL import Image

from hcformer.config import add_hcformer_config
from hcformer.data.build import build_dataset_mapper
from hcformer.engine.trainer import Trainer
from hcformer.data.dataset_loading import DatasetLoadError, load_dataset_dicts
from hcformer.detectron2_compat import RetryingMapDataset
from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer.data.image_reading import BadSampleError, read_image_file
from hcformer_shapes import ShapesSpec, register_shapes_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def semantic_train_cfg(dataset, skip):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 6
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.SKIP_BAD_SAMPLES = skip
    cfg.SOLVER.IMS_PER_BATCH = 2
    return cfg


def semantic_records(tmp_path, stems):
    records = []
    for i, stem in enumerate(stems):
        image = save(tmp_path / f"{stem}.jpg", random_rgb(24, 32, seed=i), quality=95)
        labels = np.random.default_rng(i).integers(0, 6, (24, 32), dtype=np.uint8)
        records.append({"file_name": image, "sem_seg_file_name": save(tmp_path / f"{stem}.png", labels),
                        "height": 24, "width": 32})
    return records


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def register_records(dataset_names, name, records):
    unregister_dataset(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(ignore_label=255, stuff_classes=list("abcdef"))
    dataset_names.append(name)
    return name


# ----------------------------------------------------------------------------- skipping in training
def test_training_loader_skips_truncated_and_mis_sized_samples(tmp_path, dataset_names, caplog):
    """A real detectron2 train loader: with SKIP_BAD_SAMPLES every batch is full and made of good
    samples, and the warnings name the truncated image and the one whose JSON size is wrong."""
    records = semantic_records(tmp_path, ["good0", "good1", "truncated", "resized"])
    truncate(records[2]["file_name"])
    records[3]["width"] = 40  # the JSON's size differs from the image's (detectron2: SizeMismatchError)
    name = register_records(dataset_names, "bad_samples_skip", records)
    loader = iter(Trainer.build_train_loader(semantic_train_cfg(name, skip=True)))
    with caplog.at_level(logging.WARNING, logger="hcformer.data.skip_bad_samples"):
        batches = [next(loader) for _ in range(6)]  # 12 samples: every record is drawn
    for batch in batches:
        assert len(batch) == 2
        assert {os.path.basename(d["file_name"]) for d in batch} <= {"good0.jpg", "good1.jpg"}
        assert all(tuple(d["image"].shape) == (3, 32, 64) for d in batch)  # 24 x 32 -> 32 x 43 -> pad
    assert "truncated.jpg is truncated or corrupt" in caplog.text
    assert "resized.jpg is 32 x 24 but its dataset record (annotation JSON) says 40 x 24" in caplog.text


def test_training_loader_without_skipping_names_the_bad_file(tmp_path, dataset_names):
    records = semantic_records(tmp_path, ["good", "truncated"])
    truncate(records[1]["file_name"])
    name = register_records(dataset_names, "bad_samples_no_skip", records)
    loader = iter(Trainer.build_train_loader(semantic_train_cfg(name, skip=False)))
    with pytest.raises(BadSampleError, match="truncated.jpg is truncated or corrupt"):
        for _ in range(2):  # the first two batches hold a whole epoch
            next(loader)


def test_retrying_map_dataset_replaces_skipped_samples_and_stops_when_all_fail():
    odd_skipped = RetryingMapDataset(DatasetFromList(list(range(6)), copy=False), lambda x: None if x % 2 else x)
    assert all(odd_skipped[i] % 2 == 0 for i in range(6))
    all_skipped = RetryingMapDataset(DatasetFromList([1, 2, 3], copy=False), lambda x: None)
    with pytest.raises(RuntimeError, match="All 3 training samples .* were skipped"):
        all_skipped[0]


def test_evaluation_names_an_image_whose_json_size_is_wrong(tmp_path):
    (record,) = semantic_records(tmp_path, ["resized"])
    record["height"] = 30
    cfg = semantic_train_cfg("unused", skip=True)  # evaluation never skips
    with pytest.raises(BadSampleError, match="resized.jpg is 32 x 24 but .* says 32 x 30"):
        build_dataset_mapper(cfg, is_train=False)(record)


# ----------------------------------------------------------------------------- semantic folders
def test_shapes_semantic_dataset_refuses_unmatched_images_and_labels(tmp_path):
    prefix = "shapes_unmatched"
    names = register_shapes_datasets(str(tmp_path), ShapesSpec(image_size=32, num_train=1, num_val=3), prefix, True)
    try:
        name = f"{prefix}_sem_seg_val"
        records = DatasetCatalog.get(name)  # generates the dataset; complete: no error
        assert len(records) == 3
        first = records[0]
        image_root, label_root = os.path.dirname(first["file_name"]), os.path.dirname(first["sem_seg_file_name"])
        os.remove(first["sem_seg_file_name"])
        save(os.path.join(label_root, "orphan.png"), np.zeros((4, 4), np.uint8))
        with pytest.raises(DatasetLoadError) as error:
            DatasetCatalog.get(name)
        message = str(error.value)
        assert name in message and image_root in message and label_root in message
        assert f"have no label PNG: {os.path.basename(first['file_name'])}" in message
        assert "have no image: orphan.png" in message
    finally:
        for name in names:
            unregister_dataset(name)


@pytest.mark.slow
def test_builtin_ade20k_refuses_unmatched_images_and_labels(tmp_path):
    """detectron2 registers ADE20K at import, under $DETECTRON2_DATASETS: a fresh process."""
    root = tmp_path / "ADEChallengeData2016"
    for stem in ("a", "b"):
        save(root / "images" / "validation" / f"{stem}.jpg", random_rgb(4, 4))
    for stem in ("b", "c"):
        save(root / "annotations_detectron2" / "validation" / f"{stem}.png", np.zeros((4, 4), np.uint8))
    code = (
        "import hcformer.data\n"
        "from detectron2.data import DatasetCatalog\n"
        "DatasetCatalog.get('ade20k_sem_seg_val')\n"
    )
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("hcformer.data.dataset_loading.DatasetLoadError: dataset 'ade20k_sem_seg_val'")
    assert "1 image(s) in" in last_line and "have no label PNG: a.jpg" in last_line
    assert "1 label file(s) in" in last_line and "have no image: c.png" in last_line
    assert str(root / "images" / "validation") in last_line


# ----------------------------------------------------------------------------- annotation JSON
@pytest.fixture
def panoptic_json(tmp_path, dataset_names):
    """register(content): a COCO panoptic dataset whose JSON is ``content`` (any JSON value);
    its instances JSON is valid, so messages must blame only the panoptic one."""
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))

    def register(content):
        name = f"bad_panoptic_{len(dataset_names)}"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        unregister_dataset(name)
        metadata = {"thing_dataset_id_to_contiguous_id": {1: 0}, "stuff_dataset_id_to_contiguous_id": {1: 0}}
        register_coco_panoptic(name, metadata, str(tmp_path), str(tmp_path), str(path), str(instances))
        dataset_names.append(name)
        return name, str(path), str(instances)

    return register


@pytest.mark.parametrize(
    "content, expected",
    [
        ([{"file_name": "a.png"}], "holds a JSON list at the top level; expected COCO panoptic format"),
        ({"categories": []}, "has no 'annotations' key .*; expected COCO panoptic format"),
        ({"annotations": [], "categories": []}, "has an empty 'annotations' list: the dataset has no images"),
        ({"annotations": [{"image_id": 1}], "categories": []}, r"entry 0 of 'annotations' lacks \['file_name', 'segments_info'\]"),
    ],
)
def test_panoptic_json_of_the_wrong_structure(panoptic_json, content, expected):
    name, path, instances = panoptic_json(content)
    with pytest.raises(DatasetLoadError, match=expected) as error:
        load_dataset_dicts([name])
    message = str(error.value)
    assert message.startswith(f"dataset {name!r}: {path}")
    assert instances not in message and "metadata" not in message


def test_instance_json_without_images(tmp_path, dataset_names):
    path = tmp_path / "no_images.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    register_coco_instances("no_images", {}, str(path), str(tmp_path))
    dataset_names.append("no_images")
    with pytest.raises(DatasetLoadError, match=f"'no_images': {path} has an empty 'images' list"):
        load_dataset_dicts(["no_images"])


def test_instance_json_with_a_category_it_does_not_list(tmp_path, dataset_names):
    """detectron2 raises a KeyError whose argument is a sentence: shown as one, not as a key."""
    content = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 77, "bbox": [0, 0, 2, 2], "area": 4,
                         "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]}],
    }
    path = tmp_path / "unlisted_category.json"
    path.write_text(json.dumps(content))
    register_coco_instances("unlisted_category", {}, str(path), str(tmp_path))
    dataset_names.append("unlisted_category")
    with pytest.raises(DatasetLoadError) as error:
        load_dataset_dicts(["unlisted_category"])
    message = str(error.value)
    assert message.startswith(f"dataset 'unlisted_category': {path}: Encountered category_id=77")
    assert "refers to key" not in message


def test_training_set_emptied_by_filtering_names_the_datasets_and_why(tmp_path, dataset_names):
    """Every polygon has fewer than 3 points: detectron2's loader drops them all, and then the
    filter drops every image."""
    content = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0,
                         "segmentation": [[0, 0, 2, 2]]} for i in (1, 2)],
    }
    path = tmp_path / "invalid_polygons.json"
    path.write_text(json.dumps(content))
    register_coco_instances("invalid_polygons", {}, str(path), str(tmp_path))
    dataset_names.append("invalid_polygons")
    assert len(load_dataset_dicts(["invalid_polygons"])) == 2  # evaluation keeps the images
    with pytest.raises(DatasetLoadError) as error:
        load_dataset_dicts(["invalid_polygons"], filter_empty=True)
    message = str(error.value)
    assert "['invalid_polygons']" in message and "none of the 2 images" in message
    assert "DATALOADER.FILTER_EMPTY_ANNOTATIONS" in message and "valid polygon" in message


# ----------------------------------------------------------------------------- RLE masks
@pytest.mark.parametrize("mapper_name", ["mask_former_instance", "coco_instance_lsj"])
def test_rle_mask_of_another_size_is_a_bad_sample(tmp_path, mapper_name, caplog):
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(np.ones((10, 12), np.uint8)))
    record = {
        "file_name": save(tmp_path / "rle.png", random_rgb(8, 8)),
        "annotations": [{"category_id": 0, "bbox": [0, 0, 4, 4], "bbox_mode": 1, "iscrowd": 0, "segmentation": rle}],
    }
    cfg = semantic_train_cfg("unused", skip=False)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.INPUT.IMAGE_SIZE = 32
    with pytest.raises(BadSampleError, match=r"rle.png: an RLE mask has size \[10, 12\] .* image is 8 x 8"):
        build_dataset_mapper(cfg)(record)
    cfg.DATALOADER.SKIP_BAD_SAMPLES = True
    with caplog.at_level(logging.WARNING, logger="hcformer.data.skip_bad_samples"):
        assert build_dataset_mapper(cfg)(record) is None
    assert "rle.png" in caplog.text

    record["annotations"][0]["segmentation"] = mask_util.encode(np.asfortranarray(np.ones((8, 8), np.uint8)))
    cfg.DATALOADER.SKIP_BAD_SAMPLES = False
    assert build_dataset_mapper(cfg)(record)["instances"].gt_masks.shape[0] == 1  # right size: used


# ----------------------------------------------------------------------------- 32-bit images
def test_32_bit_images_beyond_16_bits_are_refused_and_16_bit_ones_scaled(tmp_path):
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(wide)
    assert Image.open(wide).mode == "I"
    with pytest.raises(BadSampleError, match=r"wide.tif holds 32-bit pixel values \(0..70000, PIL mode I\)"):
        read_image_file(str(wide))
    negative = tmp_path / "negative.tif"
    Image.fromarray(np.array([[-5, 10]], np.int32)).save(negative)
    with pytest.raises(BadSampleError, match=r"negative.tif holds 32-bit pixel values \(-5..10"):
        read_image_file(str(negative))

    # PIL opens 16-bit PNGs in the same mode I: those are scaled, 65535 -> 255
    sixteen = save(tmp_path / "sixteen.png", np.array([[0, 257 * 100, 65535]], np.uint16))
    in_range = tmp_path / "in_range.tif"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], np.int32)).save(in_range)
    for path in (sixteen, str(in_range)):
        assert read_image_file(path)[0, :, 0].tolist() == [0, 100, 255]

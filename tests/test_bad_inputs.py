"""Bad dataset files and unusual images: a clear error naming the file, or a correct result.

Covers image reading (missing, corrupt, truncated, grayscale, RGBA, 16-bit, EXIF-rotated,
oversized), label PNGs (wrong mode, wrong size, unknown class ids), annotation JSON (does not
parse, unknown category), skipping bad samples in training but never in evaluation, and tiny /
odd-sized images through the mappers, the model and the demo.
"""
import json
import logging

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from PIL import Image

from hcformer.config import add_hcformer_config
from hcformer.data.build import build_dataset_mapper
from hcformer.data.dataset_loading import DatasetLoadError, load_dataset_dicts
from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer.data.image_reading import BadSampleError, MissingSampleFileError, read_image_file, read_label_file
from tiny_configs import load_script, task_cfg, write_task_config

EXIF_ORIENTATION = 0x0112


def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- image files
def test_missing_corrupt_and_truncated_images_are_named(tmp_path):
    with pytest.raises(MissingSampleFileError, match="image not found: .*nothing.jpg"):
        read_image_file(str(tmp_path / "nothing.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(BadSampleError, match="corrupt.jpg cannot be read as an image"):
        read_image_file(str(corrupt))
    whole = tmp_path / "whole.jpg"
    save(whole, random_rgb(64, 64), quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(BadSampleError, match="truncated.jpg is truncated or corrupt"):
        read_image_file(str(truncated))


def test_grayscale_rgba_and_16_bit_images_become_8_bit_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image_file(save(tmp_path / "gray.png", gray))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert all((out[..., c] == gray).all() for c in range(3))

    rgba = np.dstack([random_rgb(5, 7), np.full((5, 7), 10, np.uint8)])
    out = read_image_file(save(tmp_path / "rgba.png", rgba), format="BGR")
    assert out.shape == (5, 7, 3) and (out == rgba[..., 2::-1]).all()  # alpha dropped, BGR

    sixteen = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    path = save(tmp_path / "sixteen.png", sixteen)
    assert Image.open(path).mode.startswith("I")
    out = read_image_file(path)
    assert out[..., 0].tolist() == [[0, 100], [255, 7]]  # scaled, not clipped to white


def test_exif_rotation_is_applied(tmp_path):
    image = random_rgb(10, 20)  # stored landscape
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    path = save(tmp_path / "rotated.jpg", image, exif=exif, quality=100)
    out = read_image_file(path)
    assert out.shape == (20, 10, 3)  # displayed portrait


def test_oversized_images_are_refused_before_decoding(tmp_path):
    path = save(tmp_path / "big.png", random_rgb(30, 40))
    with pytest.raises(BadSampleError, match="40 x 30 = 1200 pixels, more than INPUT.MAX_IMAGE_PIXELS = 1000"):
        read_image_file(path, max_pixels=1000)
    assert read_image_file(path, max_pixels=1200).shape == (30, 40, 3)


def test_label_pngs_of_the_wrong_mode(tmp_path):
    rgb = save(tmp_path / "colour_labels.png", random_rgb(4, 4))
    with pytest.raises(BadSampleError, match="colour_labels.png has PIL mode RGB; expected one channel"):
        read_label_file(rgb, "semantic")
    gray = save(tmp_path / "gray_panoptic.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(BadSampleError, match="gray_panoptic.png has PIL mode L; expected RGB"):
        read_label_file(gray, "panoptic")
    assert read_label_file(gray, "semantic").dtype == np.uint8


# ----------------------------------------------------------------------------- mappers
def semantic_cfg(skip=False, size=64):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (size,)
    cfg.INPUT.MAX_SIZE_TRAIN = 4 * size
    cfg.INPUT.MIN_SIZE_TEST = size
    cfg.INPUT.MAX_SIZE_TEST = 4 * size
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 6
    cfg.DATALOADER.SKIP_BAD_SAMPLES = skip
    return cfg


def semantic_record(tmp_path, name, height, width, labels=None, image=None):
    image = random_rgb(height, width) if image is None else image
    labels = np.random.default_rng(1).integers(0, 6, (height, width), dtype=np.uint8) if labels is None else labels
    return {
        "file_name": save(tmp_path / f"{name}.png", image),
        "sem_seg_file_name": save(tmp_path / f"{name}_labels.png", labels),
    }


def test_unknown_class_ids_and_misaligned_labels_are_named(tmp_path):
    mapper = build_dataset_mapper(semantic_cfg())
    labels = np.full((8, 8), 255, np.uint8)
    labels[0, :3] = [2, 9, 17]
    record = semantic_record(tmp_path, "a", 8, 8, labels=labels)
    with pytest.raises(BadSampleError, match=r"a_labels.png: category ids \[9, 17\] are not in 0..5 or 255"):
        mapper(record)
    record = semantic_record(tmp_path, "b", 8, 8)
    record["sem_seg_file_name"] = save(tmp_path / "other_labels.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(BadSampleError, match="other_labels.png is 9 x 8 but image .*b.png is 8 x 8"):
        mapper(record)


def test_training_skips_bad_samples_only_when_allowed_and_evaluation_never(tmp_path, caplog):
    record = {"file_name": str(tmp_path / "gone.png"), "sem_seg_file_name": str(tmp_path / "gone_labels.png")}
    with pytest.raises(MissingSampleFileError, match="gone.png"):
        build_dataset_mapper(semantic_cfg(skip=False))(record)

    skipping = build_dataset_mapper(semantic_cfg(skip=True))
    with caplog.at_level(logging.WARNING, logger="hcformer.data.skip_bad_samples"):
        assert skipping(record) is None  # detectron2's MapDataset then draws another sample
    assert "Skipping training sample" in caplog.text and "gone.png" in caplog.text
    good = semantic_record(tmp_path, "good", 16, 16)
    assert skipping(good)["image"].shape == (3, 64, 64)

    evaluation = build_dataset_mapper(semantic_cfg(skip=True), is_train=False)
    with pytest.raises(MissingSampleFileError, match="gone.png"):
        evaluation({"file_name": record["file_name"], "image_id": 0})


def test_instance_annotations_with_unknown_categories(tmp_path):
    cfg = semantic_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_instance"
    record = {
        "file_name": save(tmp_path / "i.png", random_rgb(8, 8)),
        "annotations": [{"category_id": 6, "bbox": [0, 0, 4, 4], "bbox_mode": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]}],
    }
    with pytest.raises(BadSampleError, match=r"annotations of .*i.png: category ids \[6\] are not in 0..5"):
        build_dataset_mapper(cfg)(record)


@pytest.mark.parametrize("height, width", [(20, 24), (37, 53), (1, 40)])
def test_small_and_odd_images_train_and_evaluate(tmp_path, height, width):
    cfg = task_cfg("semantic")
    for key, value in semantic_cfg(size=64).INPUT.items():
        cfg.INPUT[key] = value
    gray = np.random.default_rng(2).integers(0, 256, (height, width), dtype=np.uint8)
    record = semantic_record(tmp_path, "small", height, width, image=gray)
    train_input = build_dataset_mapper(cfg)(record)
    image, sem_seg = train_input["image"], train_input["sem_seg"]
    assert image.shape[0] == 3 and image.shape[1:] == sem_seg.shape
    assert image.shape[1] % 32 == 0 and image.shape[2] % 32 == 0

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    losses = model([train_input])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    eval_input = build_dataset_mapper(cfg, is_train=False)(record)
    with torch.no_grad():
        (output,) = model([eval_input])
    assert output["sem_seg"].shape[-2:] == (height, width)  # back at the original size


# ----------------------------------------------------------------------------- annotation JSON
@pytest.fixture
def coco_json(tmp_path):
    names = []

    def register(content: str):
        name = f"bad_json_{len(names)}"
        path = tmp_path / f"{name}.json"
        path.write_text(content)
        register_coco_instances(name, {}, str(path), str(tmp_path))
        names.append(name)
        return name, path

    yield register
    for name in names:
        unregister_dataset(name)


def test_annotation_json_that_does_not_parse(coco_json):
    name, path = coco_json('{"images": [')
    with pytest.raises(DatasetLoadError, match="is not valid JSON") as error:
        load_dataset_dicts([name])
    assert name in str(error.value) and str(path) in str(error.value)


def test_annotation_with_a_category_missing_from_the_metadata(coco_json):
    content = {
        "images": [{"id": 1, "file_name": "x.png", "height": 4, "width": 4}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0,
                         "segmentation": [[0, 0, 2, 0, 2, 2]]}],
    }
    name, path = coco_json(json.dumps(content))
    with pytest.raises(DatasetLoadError, match="category_id") as error:
        load_dataset_dicts([name])
    assert name in str(error.value) and str(path) in str(error.value)


# ----------------------------------------------------------------------------- demo
def test_demo_reads_unusual_images_and_names_bad_ones(tmp_path):
    demo = load_script("demo/demo.py")
    images = tmp_path / "images"
    save(images / "gray.png", np.random.default_rng(3).integers(0, 256, (21, 33), dtype=np.uint8))
    save(images / "rgba.png", np.dstack([random_rgb(40, 30), np.zeros((40, 30), np.uint8)]))
    save(images / "sixteen.png", np.random.default_rng(4).integers(0, 65536, (17, 19), dtype=np.uint16))
    config = write_task_config(tmp_path, "semantic")
    written = demo.main(["--config-file", str(config), "--input", str(images), "--output", str(tmp_path / "out")])
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["gray.png", "rgba.png", "sixteen.png"]
    assert Image.open(tmp_path / "out" / "gray.png").size == (33, 21)  # drawn at the input size

    with pytest.raises(BadSampleError, match="--input image .*rgba.png is 30 x 40 = 1200 pixels"):
        demo.main(["--config-file", str(config), "--input", str(images / "rgba.png"),
                   "--output", str(tmp_path / "out2"), "INPUT.MAX_IMAGE_PIXELS", "1000"])

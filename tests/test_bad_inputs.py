"""Bad dataset files and unusual images: a clear error naming the file, or a correct result.

Covers image reading (missing, unreadable, corrupt, truncated, grayscale, RGBA, 16-bit,
EXIF-rotated, oversized), label PNGs (wrong mode, wrong size, unknown class ids, panoptic segments
missing from the JSON) in training and in evaluation, annotation JSON (does not parse, unknown
category, names missing files), skipping bad samples in training but never in evaluation, and
tiny / odd images through the mappers, the model, the evaluator and the demo.
"""
import builtins
import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_coco_panoptic
from detectron2.modeling import build_model
from PIL import Image

from hcformer.config import add_hcformer_config
from hcformer.data.build import build_dataset_mapper
from hcformer.data.dataset_loading import DatasetLoadError, load_dataset_dicts
from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer.data.image_reading import BadSampleError, MissingSampleFileError, read_image_file, read_label_file
from hcformer.evaluation import build_evaluator, load_segment_ground_truth
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


def test_unreadable_files_are_not_called_corrupt(tmp_path, monkeypatch):
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    with pytest.raises(BadSampleError, match="image .*folder.jpg is a directory, not an image file"):
        read_image_file(str(folder))

    path = save(tmp_path / "locked.png", random_rgb(4, 4))
    real_open = builtins.open

    def refuse(file, *args, **kwargs):  # tests run as root, for whom chmod 000 changes nothing
        if str(file) == path:
            raise PermissionError(13, "Permission denied", file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(BadSampleError, match="locked.png cannot be opened: permission denied") as error:
        read_image_file(path)
    assert "corrupt" not in str(error.value)
    with pytest.raises(BadSampleError, match="semantic label PNG .*locked.png cannot be opened: permission"):
        read_label_file(path, "semantic")


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


@pytest.fixture
def register(dataset_names):
    """register(name, records, **metadata): a dataset of the given records for one test."""

    def register(name, records, **metadata):
        unregister_dataset(name)
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(**metadata)
        dataset_names.append(name)
        return name

    return register


SEMANTIC_METADATA = dict(evaluator_type="sem_seg", stuff_classes=list("abcdef"), ignore_label=255)


def odd_image(tmp_path, kind, height, width):
    """An image file that displays as ``height`` x ``width`` but is stored unusually."""
    rng = np.random.default_rng(2)
    if kind == "gray":
        return save(tmp_path / "gray.png", rng.integers(0, 256, (height, width), dtype=np.uint8))
    if kind == "rgba":
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
        return save(tmp_path / "rgba.png", np.dstack([random_rgb(height, width), alpha]))
    if kind == "16-bit":
        return save(tmp_path / "sixteen.png", rng.integers(0, 65536, (height, width), dtype=np.uint16))
    assert kind == "exif-rotated"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored width x height, shown rotated by 90 degrees
    return save(tmp_path / "rotated.jpg", random_rgb(width, height), exif=exif, quality=95)


@pytest.mark.parametrize(
    "kind, height, width",
    [("gray", 20, 24), ("gray", 37, 53), ("gray", 1, 40), ("rgba", 23, 31), ("16-bit", 19, 27),
     ("exif-rotated", 30, 18)],
)
def test_small_and_odd_images_train_and_evaluate(tmp_path, register, kind, height, width):
    """Mapper -> model -> evaluator, for training and evaluation. Labels have the size the image
    is *shown* at, so an EXIF rotation that one of the steps missed fails the size checks."""
    cfg = task_cfg("semantic")
    for key, value in semantic_cfg(size=64).INPUT.items():
        cfg.INPUT[key] = value
    record = semantic_record(tmp_path, "small", height, width)
    record["file_name"] = odd_image(tmp_path, kind, height, width)
    train_input = build_dataset_mapper(cfg)(record)
    image, sem_seg = train_input["image"], train_input["sem_seg"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.shape[1:] == sem_seg.shape
    assert image.shape[1] % 32 == 0 and image.shape[2] % 32 == 0
    assert (train_input["height"], train_input["width"]) == (height, width)

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

    evaluator = build_evaluator(cfg, register(f"odd_{kind}", [record], **SEMANTIC_METADATA), str(tmp_path))
    evaluator.reset()
    evaluator.process([eval_input], [output])  # reads and checks the labels of the record
    results = evaluator.evaluate()["sem_seg"]
    assert 0 <= results["mIoU"] <= 100 and 0 <= results["pACC"] <= 100


# ----------------------------------------------------------------------------- evaluation ground truth
def one_hot_scores(labels, num_classes=6):
    """C x H x W scores whose argmax is ``labels`` (ignored pixels predicted as class 0)."""
    labels = torch.as_tensor(np.where(labels == 255, 0, labels).astype(np.int64))
    return torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()


def evaluation_cfg(tmp_path, panoptic=False):
    cfg = semantic_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = not panoptic
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    return cfg


def test_semantic_evaluation_refuses_bad_ground_truth(tmp_path, register):
    labels = np.random.default_rng(5).integers(0, 6, (12, 10), dtype=np.uint8)
    labels[:2] = 255
    unknown = labels.copy()
    unknown[5, 5] = 7  # one pixel of a class the dataset does not have
    ground_truth = {
        "good": labels,
        "unknown_ids": unknown,
        "colour": np.dstack([labels] * 3),  # a visualisation saved instead of the labels
        "wrong_size": labels[:11],
    }
    records = [
        {"file_name": str(tmp_path / f"{k}.jpg"), "sem_seg_file_name": save(tmp_path / f"{k}.png", v)}
        for k, v in ground_truth.items()
    ]
    evaluator = build_evaluator(evaluation_cfg(tmp_path), register("bad_sem_gt", records, **SEMANTIC_METADATA))
    evaluator.reset()

    def process(name, scores=None):
        scores = one_hot_scores(labels) if scores is None else scores
        evaluator.process([{"file_name": str(tmp_path / f"{name}.jpg")}], [{"sem_seg": scores}])

    process("good")
    with pytest.raises(
        BadSampleError,
        match=r"semantic ground truth .*unknown_ids.png: category ids \[7\] are not in 0..5 or 255 "
        r"\(ignore\).*fewer than the 6 stuff_classes of dataset 'bad_sem_gt'",
    ):
        process("unknown_ids")
    with pytest.raises(BadSampleError, match="colour.png has PIL mode RGB; expected one channel"):
        process("colour")
    with pytest.raises(BadSampleError, match="wrong_size.png is 10 x 11 but image .*wrong_size.jpg is 10 x 12"):
        process("wrong_size")
    with pytest.raises(ValueError, match="has 5 class scores but dataset 'bad_sem_gt' has 6 stuff_classes"):
        process("good", one_hot_scores(labels, 6)[:5])
    # nothing of the refused images was counted: the good one alone scores 100
    results = evaluator.evaluate()["sem_seg"]
    assert results["mIoU"] == pytest.approx(100.0) and results["pACC"] == pytest.approx(100.0)


def test_checked_semantic_evaluator_keeps_the_boundary_scores_of_newer_detectron2(tmp_path, register):
    """detectron2 after v0.6 also fills a boundary confusion matrix in ``process``; the checked
    evaluator replaces ``process``, so it must fill that matrix too (simulated here on v0.6)."""
    labels = np.random.default_rng(6).integers(0, 6, (12, 10), dtype=np.uint8)
    records = [{"file_name": str(tmp_path / "a.jpg"), "sem_seg_file_name": save(tmp_path / "a.png", labels)}]
    evaluator = build_evaluator(evaluation_cfg(tmp_path), register("boundary_gt", records, **SEMANTIC_METADATA))
    evaluator.reset()
    evaluator._compute_boundary_iou = True
    evaluator._b_conf_matrix = np.zeros_like(evaluator._conf_matrix)
    evaluator._mask_to_boundary = lambda mask: np.where(mask % 2 == 0, mask, 0)  # any map of ids
    scores = one_hot_scores(labels)
    scores[:, 0, 0] = torch.tensor([0, 0, 0, 0, 0, 10.0])  # one wrong pixel
    evaluator.process([{"file_name": str(tmp_path / "a.jpg")}], [{"sem_seg": scores}])
    pred = scores.argmax(0).numpy()
    expected = np.zeros_like(evaluator._conf_matrix)
    np.add.at(expected, (evaluator._mask_to_boundary(pred), evaluator._mask_to_boundary(labels)), 1)
    np.testing.assert_array_equal(evaluator._b_conf_matrix, expected)
    assert evaluator._conf_matrix.sum() == labels.size


def panoptic_png(ids):
    """H x W segment ids -> the COCO panoptic RGB encoding (R + 256 G + 256^2 B)."""
    ids = np.asarray(ids)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


SEGMENTS = [
    {"id": 1, "category_id": 0, "iscrowd": 0, "isthing": True},
    {"id": 300, "category_id": 1, "iscrowd": 0, "isthing": False},
]
PANOPTIC_METADATA = dict(
    evaluator_type="coco_panoptic_seg",
    thing_dataset_id_to_contiguous_id={1: 0},
    stuff_dataset_id_to_contiguous_id={2: 1},
    ignore_label=255,
)


def test_panoptic_ground_truth_is_checked_in_training_and_evaluation(tmp_path, register):
    ids = np.zeros((6, 8), np.int64)
    ids[:3] = 1
    ids[3:, 2:] = 300
    unlisted = ids.copy()
    unlisted[0, 0] = 5  # a segment the JSON does not have
    pngs = {
        "good": panoptic_png(ids),
        "unlisted": panoptic_png(unlisted),
        "gray": ids.astype(np.uint8),  # a single-channel PNG: ids would be misread
        "wrong_size": panoptic_png(ids[:5]),
    }
    records = [
        {
            "file_name": save(tmp_path / f"{k}.png", random_rgb(6, 8)),
            "image_id": i,
            "pan_seg_file_name": save(tmp_path / f"{k}_panoptic.png", v),
            "segments_info": SEGMENTS,
        }
        for i, (k, v) in enumerate(pngs.items())
    ]
    expected = {
        "unlisted": r"unlisted_panoptic.png: segment ids \[5\] are in the PNG but not in the record's segments_info",
        "gray": "gray_panoptic.png has PIL mode L; expected RGB",
        "wrong_size": "wrong_size_panoptic.png is 8 x 5 but image .*wrong_size.png is 8 x 6",
    }
    cfg = evaluation_cfg(tmp_path, panoptic=True)
    evaluator = build_evaluator(cfg, register("bad_pan_gt", records, **PANOPTIC_METADATA))
    evaluator.reset()
    prediction = (torch.as_tensor(ids), [dict(s) for s in SEGMENTS])
    for record, name in zip(records, pngs):
        # as the test mapper gives it (ground truth looked up in the dataset), and with the record
        for input in ({"file_name": record["file_name"], "image_id": record["image_id"]}, record):
            if name == "good":
                evaluator.process([input], [{"panoptic_seg": prediction}])
                continue
            with pytest.raises(BadSampleError, match=expected[name]):
                evaluator.process([input], [{"panoptic_seg": prediction}])
    assert len(evaluator._predictions) == 2  # the good image only, once per input form

    # the same files in training and in the hierarchy evaluation's ground truth
    for mapper_name in ("mask_former_panoptic", "coco_panoptic_lsj"):
        cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
        cfg.INPUT.IMAGE_SIZE = 32
        mapper = build_dataset_mapper(cfg)
        assert len(mapper(records[0])["instances"]) == 2
        for record, name in zip(records[1:], list(pngs)[1:]):
            with pytest.raises(BadSampleError, match=expected[name]):
                mapper(record)
    gt, _ = load_segment_ground_truth(records[0], "panoptic")
    assert np.array_equal(gt, ids)
    for record, name in zip(records[1:], list(pngs)[1:-1]):  # (it reads no image: any size goes)
        with pytest.raises(BadSampleError, match=expected[name]):
            load_segment_ground_truth(record, "panoptic")


def test_hierarchy_ground_truth_refuses_colour_semantic_pngs(tmp_path):
    record = {"file_name": "x.jpg", "sem_seg_file_name": save(tmp_path / "colour.png", random_rgb(4, 4))}
    with pytest.raises(BadSampleError, match="colour.png has PIL mode RGB; expected one channel"):
        load_segment_ground_truth(record, "semantic")


# ----------------------------------------------------------------------------- annotation JSON
@pytest.fixture
def coco_json(tmp_path):
    names = []

    def register(content: str, image_root=tmp_path):
        name = f"bad_json_{len(names)}"
        path = tmp_path / f"{name}.json"
        path.write_text(content)
        register_coco_instances(name, {}, str(path), str(image_root))
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


def test_coco_instance_json_naming_a_missing_image(tmp_path, coco_json):
    images = tmp_path / "images"
    save(images / "there.png", random_rgb(8, 8))
    content = {
        "images": [{"id": i, "file_name": n, "height": 8, "width": 8} for i, n in ((1, "there.png"), (2, "gone.png"))],
        "categories": [{"id": 3, "name": "a"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 8, "iscrowd": 0,
                         "segmentation": [[0, 0, 4, 0, 4, 4]]} for i in (1, 2)],
    }
    name, _ = coco_json(json.dumps(content), image_root=images)
    there, gone = load_dataset_dicts([name])  # through DatasetCatalog and detectron2's loader
    assert gone["file_name"] == str(images / "gone.png")

    cfg = semantic_cfg()
    mappers = []
    for mapper_name in ("mask_former_instance", "coco_instance_lsj"):
        cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
        cfg.INPUT.IMAGE_SIZE = 32
        mappers.append(build_dataset_mapper(cfg))
    mappers.append(build_dataset_mapper(cfg, is_train=False))
    for mapper in mappers:
        assert mapper(there)["image"].shape[0] == 3
        with pytest.raises(MissingSampleFileError, match=f"image not found: {re.escape(gone['file_name'])}$"):
            mapper(gone)


def test_coco_panoptic_json_naming_missing_files(tmp_path, dataset_names):
    """Image b.jpg and panoptic PNG c.png are missing: training, the test mapper and the
    panoptic evaluator each name the file they need; a missing first image fails the loading."""
    images, panoptic = tmp_path / "images", tmp_path / "panoptic"
    ids = np.ones((6, 8), np.int64)
    ids[3:] = 300
    for stem in ("a", "b", "c"):
        if stem != "b":
            save(images / f"{stem}.jpg", random_rgb(6, 8))
        if stem != "c":
            save(panoptic / f"{stem}.png", panoptic_png(ids))
    segments = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 300, "category_id": 2, "iscrowd": 0}]

    def register_json(name, stems):
        content = {
            "categories": [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}],
            "annotations": [{"image_id": i, "file_name": f"{s}.png", "segments_info": segments} for i, s in enumerate(stems)],
        }
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        unregister_dataset(name)
        metadata = {k: v for k, v in PANOPTIC_METADATA.items() if k.endswith("contiguous_id")}
        register_coco_panoptic(name, metadata, str(images), str(panoptic), str(path))
        dataset_names.append(name)
        return name

    records = {os.path.basename(r["file_name"]): r for r in load_dataset_dicts([register_json("pan_missing", "abc")])}
    missing_image, missing_png = str(images / "b.jpg"), str(panoptic / "c.png")
    cfg = evaluation_cfg(tmp_path, panoptic=True)
    for mapper_name in ("mask_former_panoptic", "coco_panoptic_lsj"):
        cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
        cfg.INPUT.IMAGE_SIZE = 32
        mapper = build_dataset_mapper(cfg)
        assert len(mapper(records["a.jpg"])["instances"]) == 2
        with pytest.raises(MissingSampleFileError, match=f"^image not found: {re.escape(missing_image)}$"):
            mapper(records["b.jpg"])
        with pytest.raises(MissingSampleFileError, match=f"^panoptic label PNG not found: {re.escape(missing_png)}$"):
            mapper(records["c.jpg"])

    test_mapper = build_dataset_mapper(cfg, is_train=False)
    with pytest.raises(MissingSampleFileError, match=f"^image not found: {re.escape(missing_image)}$"):
        test_mapper(records["b.jpg"])
    evaluator = build_evaluator(cfg, "pan_missing")
    evaluator.reset()
    prediction = {"panoptic_seg": (torch.as_tensor(ids), [])}
    with pytest.raises(MissingSampleFileError, match=f"^panoptic label PNG not found: {re.escape(missing_png)}$"):
        evaluator.process([test_mapper(records["c.jpg"])], [prediction])

    # detectron2's loader checks that the first image exists with a bare assert
    with pytest.raises(DatasetLoadError, match=f"'pan_first_missing': .* names {re.escape(missing_image)}, which does"):
        load_dataset_dicts([register_json("pan_first_missing", "ba")])


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

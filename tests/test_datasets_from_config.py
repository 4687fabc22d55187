"""Datasets registered from the config (DATASETS.COCO_INSTANCES / COCO_PANOPTIC / SEM_SEG) and
MODEL.SEM_SEG_HEAD.NUM_CLASSES -1: registration, category ids of any kind, derived files, and
bad input named in one message with nothing written. The instance -> panoptic converter has its
own module (test_prepare_panoptic_from_instances.py), the end-to-end runs too
(test_datasets_from_config_training.py).
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from hcformer.config import add_hcformer_config
from hcformer.data.datasets import DatasetConfigError, MissingDatasetError
from hcformer.data.datasets.register_from_config import register_datasets_from_config
from hcformer.data.dataset_loading import DatasetLoadError
from hcformer.engine.config_validation import ConfigError, merge_config_list, validate_config
from hcformer_shapes import ShapesSpec, ensure_shapes_dataset
from tiny_configs import SHAPES_CONFIG

SHAPE_NAMES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Tiny shapes in every format (64 px, 2 train / 2 val images), shared by the tests."""
    root = tmp_path_factory.mktemp("datasets")
    return Path(ensure_shapes_dataset(ShapesSpec(image_size=64, num_train=2, num_val=2, seed=3), str(root)))


def config(**datasets):
    """The shapes panoptic config with DATASETS.<KEY> = value for each keyword."""
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(SHAPES_CONFIG))
    for key, value in datasets.items():
        cfg.DATASETS[key] = value
    return cfg


def file_listing(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def gappy_instances_json(shapes: Path, path: Path) -> dict:
    """The shapes' val instance JSON with category ids 42, 3, 7, 10 for circle, square, triangle,
    star, plus an unannotated "_background_" category 0 first, as some annotation tools export."""
    content = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    new_ids = {1: 42, 2: 3, 3: 7, 4: 10}
    for annotation in content["annotations"]:
        annotation["category_id"] = new_ids[annotation["category_id"]]
    content["categories"] = [{"id": 0, "name": "_background_"}] + [
        {"id": new_ids[c["id"]], "name": c["name"]} for c in content["categories"]
    ]
    path.write_text(json.dumps(content))
    return content


def test_a_list_of_lists_parses_on_the_command_line():
    cfg = config()
    merge_config_list(cfg, ["DATASETS.COCO_INSTANCES", '[["mine", "a.json", "images"]]'])
    assert cfg.DATASETS.COCO_INSTANCES == [["mine", "a.json", "images"]]
    merge_config_list(cfg, ["DATASETS.SEM_SEG", '[["a", "i", "l", "c.txt"], ["b", "i2", "l2", "c.txt"]]'])
    assert [entry[0] for entry in cfg.DATASETS.SEM_SEG] == ["a", "b"]


def test_coco_instances_with_gappy_ids_and_an_unannotated_category(shapes, tmp_path, dataset_names):
    content = gappy_instances_json(shapes, tmp_path / "mine.json")
    dataset_names.append("cfg_instances")
    cfg = config(COCO_INSTANCES=[["cfg_instances", str(tmp_path / "mine.json"), str(shapes / "images" / "val")]])
    cfg.DATASETS.TRAIN = ("cfg_instances",)
    cfg.DATASETS.TEST = ("cfg_instances",)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_instance"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = -1

    notes = validate_config(cfg)
    # detectron2's standard mapping: categories sorted by id -> 0, 1, 2, ...
    metadata = MetadataCatalog.get("cfg_instances")
    assert metadata.thing_classes == ["_background_", "square", "triangle", "star", "circle"]
    assert metadata.thing_dataset_id_to_contiguous_id == {0: 0, 3: 1, 7: 2, 10: 3, 42: 4}
    assert metadata.evaluator_type == "coco"
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 5
    assert notes == [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES -1: 5 classes, from the training dataset(s) ['cfg_instances'] "
        "(len(metadata.thing_classes))"
    ]
    records = DatasetCatalog.get("cfg_instances")
    contiguous = sorted(a["category_id"] for r in records for a in r["annotations"])
    expected = sorted({42: 4, 3: 1, 7: 2, 10: 3}[a["category_id"]] for a in content["annotations"])
    assert contiguous == expected
    # loading the JSON sets the same metadata detectron2's loader computes
    assert metadata.thing_classes == ["_background_", "square", "triangle", "star", "circle"]

    # the same entry again (another tool in the same process) changes nothing
    assert validate_config(config(COCO_INSTANCES=cfg.DATASETS.COCO_INSTANCES)) == []


def test_sem_seg_from_folders_and_a_classes_file(shapes, tmp_path, dataset_names):
    (tmp_path / "classes.txt").write_text("\n".join(SHAPE_NAMES + ["sky", "ground"]) + "\n\n")
    dataset_names.append("cfg_sem")
    entry = ["cfg_sem", str(shapes / "images" / "val"), str(shapes / "annotations" / "val"), str(tmp_path / "classes.txt")]
    cfg = config(SEM_SEG=[entry])
    cfg.DATASETS.TRAIN = ("cfg_sem",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = -1
    validate_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 6
    metadata = MetadataCatalog.get("cfg_sem")
    assert metadata.stuff_classes == SHAPE_NAMES + ["sky", "ground"]
    assert (metadata.evaluator_type, metadata.ignore_label) == ("sem_seg", 255)
    records = DatasetCatalog.get("cfg_sem")
    assert len(records) == 2
    for record in records:
        stem = Path(record["file_name"]).stem
        assert record["sem_seg_file_name"] == str(shapes / "annotations" / "val" / f"{stem}.png")


def test_sem_seg_images_of_several_or_no_extension_are_named(shapes, tmp_path, dataset_names):
    images = tmp_path / "images"
    shutil.copytree(shapes / "images" / "val", images)
    first = sorted(images.iterdir())[0]
    first.rename(first.with_suffix(".png"))
    (tmp_path / "classes.txt").write_text("\n".join(SHAPE_NAMES + ["sky", "ground"]) + "\n")
    dataset_names += ["cfg_mixed", "cfg_empty"]
    (tmp_path / "empty").mkdir()
    labels, classes = str(shapes / "annotations" / "val"), str(tmp_path / "classes.txt")
    validate_config(config(SEM_SEG=[["cfg_mixed", str(images), labels, classes],
                                    ["cfg_empty", str(tmp_path / "empty"), labels, classes]]))
    with pytest.raises(DatasetLoadError, match=r"'cfg_mixed': image_dir .* holds images with several extensions \['.jpg', '.png'\]"):
        DatasetCatalog.get("cfg_mixed")
    with pytest.raises(DatasetLoadError, match=r"'cfg_empty': image_dir .*empty holds no image; expected images of one extension"):
        DatasetCatalog.get("cfg_empty")


def test_panoptic_derives_semantic_pngs_and_instances_once(shapes, tmp_path, dataset_names):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    panoptic_json, panoptic_root = data / "annotations" / "panoptic_val.json", data / "panoptic_val"
    dataset_names.append("cfg_panoptic")
    entry = ["cfg_panoptic", str(panoptic_json), str(panoptic_root), str(data / "images" / "val")]
    register_datasets_from_config(config(COCO_PANOPTIC=[entry]))
    semantic_root = data / "panoptic_val_semseg"
    assert not semantic_root.exists()  # derived on first use, not at registration

    records = DatasetCatalog.get("cfg_panoptic")
    metadata = MetadataCatalog.get("cfg_panoptic")
    assert metadata.stuff_classes == SHAPE_NAMES + ["sky", "ground"]
    assert (metadata.evaluator_type, metadata.sem_seg_root) == ("coco_panoptic_seg", str(semantic_root))
    # the same labels as Mask2Former's prepare script convention, which the shapes generator follows
    for record in records:
        name = Path(record["pan_seg_file_name"]).name
        assert record["sem_seg_file_name"] == str(semantic_root / name)
        derived = np.asarray(Image.open(semantic_root / name))
        assert np.array_equal(derived, np.asarray(Image.open(data / "panoptic_semseg_val" / name)))
        assert record["file_name"] == str(data / "images" / "val" / (Path(name).stem + ".jpg"))

    # the instance JSON for mask AP: one annotation per thing segment, its visible pixels
    instances = json.loads(Path(metadata.json_file).read_text())
    things = [s for r in records for s in r["segments_info"] if s["isthing"]]
    assert len(instances["annotations"]) == len(things)
    assert [c["name"] for c in instances["categories"]] == SHAPE_NAMES
    assert sum(a["area"] for a in instances["annotations"]) == sum(s["area"] for s in things)

    # a second load uses the derived files as they are
    stamp = os.stat(semantic_root / "COMPLETE.json").st_mtime_ns
    DatasetCatalog.get("cfg_panoptic")
    assert os.stat(semantic_root / "COMPLETE.json").st_mtime_ns == stamp

    # the JSON changed since: the stale derived files are refused, and kept
    panoptic_json.write_text(panoptic_json.read_text() + "\n")
    with pytest.raises(DatasetLoadError, match=r"has changed since\); delete the folder"):
        DatasetCatalog.get("cfg_panoptic")
    assert (semantic_root / "COMPLETE.json").stat().st_mtime_ns == stamp


def test_a_folder_hcformer_did_not_write_is_never_replaced(shapes, tmp_path, dataset_names):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    mine = data / "panoptic_val_semseg"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own files")
    dataset_names.append("cfg_panoptic_foreign")
    entry = [
        "cfg_panoptic_foreign", str(data / "annotations" / "panoptic_val.json"), str(data / "panoptic_val"),
        str(data / "images" / "val"),
    ]
    register_datasets_from_config(config(COCO_PANOPTIC=[entry]))
    with pytest.raises(DatasetLoadError, match="exists but was not derived by hcformer"):
        DatasetCatalog.get("cfg_panoptic_foreign")
    assert os.listdir(mine) == ["notes.txt"]


@pytest.mark.parametrize(
    "key, entry, message",
    [
        ("COCO_INSTANCES", ["x", "{tmp}/missing.json", "{images}"], "the json_file '{tmp}/missing.json' is not an existing file"),
        ("COCO_INSTANCES", ["x", "{instances}", "{tmp}/no_images"], "the image_root '{tmp}/no_images' is not an existing folder"),
        ("COCO_PANOPTIC", ["x", "{tmp}/missing.json", "{panoptic}", "{images}"], "panoptic_json '{tmp}/missing.json'"),
        ("SEM_SEG", ["x", "{images}", "{labels}", "{tmp}/classes.txt"], "the classes_txt '{tmp}/classes.txt' is not an existing file"),
        ("SEM_SEG", ["x", "{images}", "{tmp}/labels", "{instances}"], "label_dir '{tmp}/labels'"),
    ],
    ids=["json", "image_root", "panoptic_json", "classes", "label_dir"],
)
def test_a_missing_file_or_folder_is_named(shapes, tmp_path, key, entry, message):
    paths = {
        "tmp": str(tmp_path), "images": str(shapes / "images" / "val"), "labels": str(shapes / "annotations" / "val"),
        "instances": str(shapes / "annotations" / "instances_val.json"), "panoptic": str(shapes / "panoptic_val"),
    }
    entry = [value.format(**paths) for value in entry]
    before = file_listing(tmp_path), file_listing(shapes)
    with pytest.raises(MissingDatasetError) as error:
        validate_config(config(**{key: [entry]}))
    assert str(error.value).startswith(f"DATASETS.{key}[0] ('x'): ")
    assert message.format(**paths) in str(error.value)
    assert "x" not in DatasetCatalog
    assert (file_listing(tmp_path), file_listing(shapes)) == before  # nothing written


def test_malformed_entries_and_class_files(shapes, tmp_path):
    with pytest.raises(DatasetConfigError, match=r"DATASETS.COCO_INSTANCES\[0\] = \['x', 'a.json'\]: expected a list of 3"):
        register_datasets_from_config(config(COCO_INSTANCES=[["x", "a.json"]]))
    # every entry's form is checked before the first is registered (whose files do not exist)
    with pytest.raises(DatasetConfigError, match=r"COCO_PANOPTIC\[1\] = 'x': expected a list of 4 or 5 non-empty"):
        register_datasets_from_config(config(COCO_PANOPTIC=[["ok", "a", "b", "c"], "x"]))
    (tmp_path / "classes.txt").write_text("circle\n\nsquare\ncircle\n")
    entry = ["bad_classes", str(shapes / "images" / "val"), str(shapes / "annotations" / "val"), str(tmp_path / "classes.txt")]
    with pytest.raises(DatasetConfigError, match=r"line 2 is empty; \['circle'\] appear more than once"):
        register_datasets_from_config(config(SEM_SEG=[entry]))
    assert "bad_classes" not in DatasetCatalog


def test_a_name_means_one_set_of_files(shapes, tmp_path, dataset_names):
    images = str(shapes / "images" / "val")
    first = ["cfg_twice", str(shapes / "annotations" / "instances_val.json"), images]
    gappy_instances_json(shapes, tmp_path / "other.json")
    dataset_names.append("cfg_twice")
    register_datasets_from_config(config(COCO_INSTANCES=[first]))
    register_datasets_from_config(config(COCO_INSTANCES=[first]))  # the same files: fine
    with pytest.raises(DatasetConfigError, match="'cfg_twice' of DATASETS.COCO_INSTANCES is already registered from the config"):
        register_datasets_from_config(config(COCO_INSTANCES=[["cfg_twice", str(tmp_path / "other.json"), images]]))
    with pytest.raises(DatasetConfigError, match=r"already registered otherwise \(a builtin dataset"):
        register_datasets_from_config(config(COCO_INSTANCES=[["coco_2017_val", first[1], images]]))
    assert MetadataCatalog.get("cfg_twice").json_file == first[1]


def test_num_classes_that_disagree_with_the_data_names_the_right_number(shapes, dataset_names):
    dataset_names.append("cfg_count")
    cfg = config(COCO_INSTANCES=[["cfg_count", str(shapes / "annotations" / "instances_val.json"), str(shapes / "images" / "val")]])
    cfg.DATASETS.TRAIN = ("cfg_count",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    with pytest.raises(ConfigError, match=r"NUM_CLASSES=3, but dataset 'cfg_count' has 4 classes"):
        validate_config(cfg)
    cfg.DATASETS.TRAIN = ()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = -1
    with pytest.raises(ConfigError, match="takes the number of classes from DATASETS.TRAIN, which is empty"):
        validate_config(cfg)


def test_annotation_files_of_the_wrong_content_are_named_at_registration(shapes, tmp_path):
    panoptic = json.loads((shapes / "annotations" / "panoptic_val.json").read_text())
    panoptic["annotations"][1]["segments_info"][0]["category_id"] = 99
    (tmp_path / "panoptic.json").write_text(json.dumps(panoptic))
    entry = ["bad_panoptic", str(tmp_path / "panoptic.json"), str(shapes / "panoptic_val"), str(shapes / "images" / "val")]
    with pytest.raises(DatasetConfigError, match=r"COCO_PANOPTIC\[0\] \('bad_panoptic'\): .*panoptic.json: segment \d+ of '\w+.png' has category_id 99, which is not in 'categories'"):
        register_datasets_from_config(config(COCO_PANOPTIC=[entry]))

    instances = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    instances["categories"].append(dict(instances["categories"][0], name="again"))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    entry = ["bad_instances", str(tmp_path / "instances.json"), str(shapes / "images" / "val")]
    with pytest.raises(DatasetConfigError, match=r"instances.json: two entries of 'categories' have the id 1"):
        register_datasets_from_config(config(COCO_INSTANCES=[entry]))
    assert "bad_panoptic" not in DatasetCatalog and "bad_instances" not in DatasetCatalog

"""The synthetic shapes dataset: deterministic, in formats real tools read, generated atomically
and registered through detectron2's own loaders; real datasets fail clearly when missing."""

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO

from hcformer.data.datasets import MissingDatasetError
from hcformer.data.datasets.atomic_dir import MARKER_NAME, build_directory_once
from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer_shapes import ShapesSpec, register_shapes_datasets
from hcformer_shapes import generator

TINY = ShapesSpec(image_size=48, num_train=3, num_val=2, seed=7)


def read_tree(root):
    """{relative path: bytes} of every file under ``root``."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generator.ensure_shapes_dataset(TINY, str(tmp_path_factory.mktemp("datasets")))


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path, tiny_dir):
    again = generator.ensure_shapes_dataset(TINY, str(tmp_path / "again"))
    assert read_tree(again) == read_tree(tiny_dir)

    other = ShapesSpec(image_size=48, num_train=3, num_val=2, seed=8)
    other_tree = read_tree(generator.ensure_shapes_dataset(other, str(tmp_path / "other")))
    assert other_tree["images/train/000001.jpg"] != read_tree(tiny_dir)["images/train/000001.jpg"]


def test_image_does_not_depend_on_the_number_of_images(tmp_path, tiny_dir):
    fewer = ShapesSpec(image_size=48, num_train=1, num_val=1, seed=7)
    fewer_tree = read_tree(generator.ensure_shapes_dataset(fewer, str(tmp_path)))
    full_tree = read_tree(tiny_dir)
    for name in (
        "images/train/000001.jpg",
        "panoptic_val/000001.png",
        "annotations/train/000001.png",
    ):
        assert fewer_tree[name] == full_tree[name]


def test_panoptic_files_follow_the_coco_panoptic_format(tiny_dir):
    paths = generator.shapes_split_paths(tiny_dir, "train")
    with open(paths.panoptic_json) as f:
        content = json.load(f)
    assert content["categories"] == generator.SHAPES_CATEGORIES
    assert sum(c["isthing"] for c in content["categories"]) >= 4
    assert sum(not c["isthing"] for c in content["categories"]) >= 2
    assert [image["id"] for image in content["images"]] == [1, 2, 3]
    seen_categories = set()
    for annotation in content["annotations"]:
        segment_ids = rgb2id(
            np.asarray(Image.open(os.path.join(paths.panoptic_root, annotation["file_name"])))
        )
        assert segment_ids.shape == (48, 48)
        listed = {s["id"] for s in annotation["segments_info"]}
        assert set(np.unique(segment_ids)) - {0} == listed  # 0 = unlabeled
        for segment in annotation["segments_info"]:
            mask = segment_ids == segment["id"]
            ys, xs = np.nonzero(mask)
            assert segment["area"] == mask.sum() > 0
            assert segment["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert segment["iscrowd"] == 0
            seen_categories.add(segment["category_id"])
        # the image each annotation belongs to is an RGB JPEG of the same size
        image = Image.open(
            os.path.join(paths.image_root, annotation["file_name"].replace(".png", ".jpg"))
        )
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (48, 48))
    assert {11, 12} <= seen_categories  # stuff is present


def test_semantic_pngs_agree_with_panoptic_annotations(tiny_dir):
    paths = generator.shapes_split_paths(tiny_dir, "val")
    contiguous = {c["id"]: i for i, c in enumerate(generator.SHAPES_CATEGORIES)}
    with open(paths.panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    for annotation in annotations:
        name = annotation["file_name"]
        semantic = np.asarray(Image.open(os.path.join(paths.sem_seg_root, name)))
        assert semantic.dtype == np.uint8
        assert set(np.unique(semantic)) <= {0, 1, 2, 3, 4, 5, 255}
        segment_ids = rgb2id(np.asarray(Image.open(os.path.join(paths.panoptic_root, name))))
        expected = np.full(segment_ids.shape, 255)
        for segment in annotation["segments_info"]:
            expected[segment_ids == segment["id"]] = contiguous[segment["category_id"]]
        assert np.array_equal(semantic, expected)
        panoptic_semseg = np.asarray(Image.open(os.path.join(paths.panoptic_semseg_root, name)))
        assert np.array_equal(panoptic_semseg, semantic)


def test_instance_json_is_read_by_pycocotools_and_detectron2(tiny_dir):
    paths = generator.shapes_split_paths(tiny_dir, "train")
    coco = COCO(paths.instances_json)
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    for annotation in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(annotation)
        assert mask.shape == (48, 48) and mask.sum() == annotation["area"] > 0
        assert annotation["iscrowd"] == 0
    records = load_coco_json(paths.instances_json, paths.image_root)
    assert len(records) == 3 and all(r["height"] == r["width"] == 48 for r in records)
    assert sum(len(r["annotations"]) for r in records) == len(coco.getAnnIds())


# The default image size, a dozen images: enough for the properties below to show for this seed.
DEFAULT_SIZE = ShapesSpec(image_size=128, num_train=12, num_val=1, seed=0)


@pytest.fixture(scope="module")
def default_size_with_full_masks(tmp_path_factory):
    """(dataset dir, full shape masks of each rendered image in drawing order).

    The files keep only what is visible; to see occlusion we record every shape's whole mask
    while the generator draws it (train images first, then val, as they are written).
    """
    drawn = []
    real_render, real_shape_mask = generator.render_sample, generator._shape_mask

    def render(*args):
        drawn.append([])
        return real_render(*args)

    def shape_mask(*args):
        mask = real_shape_mask(*args)
        drawn[-1].append(mask)
        return mask

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generator, "render_sample", render)
        mp.setattr(generator, "_shape_mask", shape_mask)
        directory = generator.ensure_shapes_dataset(
            DEFAULT_SIZE, str(tmp_path_factory.mktemp("datasets"))
        )
    assert len(drawn) == DEFAULT_SIZE.num_train + DEFAULT_SIZE.num_val
    return directory, drawn


def boxes_overlap(a, b):
    """Whether two COCO [x, y, w, h] boxes share some area."""
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(
        a[1] + a[3], b[1] + b[3]
    ) > max(a[1], b[1])


def test_things_overlap_and_come_in_very_different_sizes(default_size_with_full_masks):
    directory, _ = default_size_with_full_masks
    paths = generator.shapes_split_paths(directory, "train")
    coco = COCO(paths.instances_json)
    overlapping, areas = 0, []
    for image_id in coco.getImgIds():
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        areas += [a["area"] for a in annotations]
        pairs = itertools.combinations([a["bbox"] for a in annotations], 2)
        overlapping += sum(boxes_overlap(a, b) for a, b in pairs)
    assert overlapping >= 5, "things should overlap each other"
    assert min(areas) < 32**2  # COCO's "small": APs has objects to measure
    assert min(areas) < 0.01 * DEFAULT_SIZE.image_size**2  # tiny next to the image...
    assert max(areas) > 20 * min(areas)  # ...and next to the big ones

    with open(paths.panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    seen = {s["category_id"] for a in annotations for s in a["segments_info"]}
    assert seen == {1, 2, 3, 4, 11, 12}  # all four thing and both stuff classes are drawn


def test_things_are_partly_hidden_by_the_ones_drawn_after_them(default_size_with_full_masks):
    directory, drawn = default_size_with_full_masks
    paths = generator.shapes_split_paths(directory, "train")
    partly_hidden = 0
    for image_id, full_masks in enumerate(drawn[: DEFAULT_SIZE.num_train], start=1):
        png = os.path.join(paths.panoptic_root, f"{image_id:06d}.png")
        panoptic = rgb2id(np.asarray(Image.open(png)))
        things = [i for i in np.unique(panoptic) if 0 < i < 11 * 1000]  # stuff ids are 11000+
        for segment_id in things:
            k = segment_id % 1000  # segment id = category id * 1000 + k (the k-th shape drawn)
            visible, full = panoptic == segment_id, full_masks[k - 1]
            assert not (visible & ~full).any(), "a thing is labeled outside its own shape"
            # what is hidden lies under a shape drawn later (or a void fragment of one)
            covering = panoptic[full & ~visible]
            assert all(c == 0 or (c < 11 * 1000 and c % 1000 > k) for c in np.unique(covering))
            partly_hidden += covering.size > 0
    assert partly_hidden >= 5, "things should occlude each other"


def test_registration_gives_metadata_first_and_generates_on_first_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setenv("HCFORMER_SHAPES_SIZE", "40")
    monkeypatch.setenv("HCFORMER_SHAPES_TRAIN", "2")
    monkeypatch.setenv("HCFORMER_SHAPES_VAL", "1")
    prefix = "shapes_regtest"
    names = register_shapes_datasets(prefix=prefix, replace=True)
    try:
        assert set(names) == {
            f"{prefix}_train",
            f"{prefix}_val",
            f"{prefix}_train_panoptic_with_sem_seg",
            f"{prefix}_val_panoptic_with_sem_seg",
            f"{prefix}_sem_seg_train",
            f"{prefix}_sem_seg_val",
        }
        panoptic = MetadataCatalog.get(f"{prefix}_val_panoptic_with_sem_seg")
        assert panoptic.evaluator_type == "coco_panoptic_seg"
        assert panoptic.stuff_classes == ["circle", "square", "triangle", "star", "sky", "ground"]
        assert panoptic.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
        assert panoptic.stuff_dataset_id_to_contiguous_id[12] == 5
        assert (panoptic.ignore_label, panoptic.label_divisor) == (255, 1000)
        assert panoptic.panoptic_root.startswith(
            str(tmp_path / "shapes" / "40px_2train_1val_seed0")
        )
        assert MetadataCatalog.get(f"{prefix}_sem_seg_val").evaluator_type == "sem_seg"
        assert MetadataCatalog.get(f"{prefix}_val").evaluator_type == "coco"
        assert not os.path.exists(panoptic.panoptic_root)  # nothing generated yet

        records = DatasetCatalog.get(f"{prefix}_val_panoptic_with_sem_seg")
        assert len(records) == 1
        record = records[0]
        assert set(record) >= {
            "file_name",
            "image_id",
            "pan_seg_file_name",
            "segments_info",
            "sem_seg_file_name",
        }
        assert all(
            os.path.isfile(record[k])
            for k in ("file_name", "pan_seg_file_name", "sem_seg_file_name")
        )
        assert all(s["category_id"] in range(6) and "isthing" in s for s in record["segments_info"])
        semantic = DatasetCatalog.get(f"{prefix}_sem_seg_train")
        assert len(semantic) == 2 and os.path.isfile(semantic[0]["sem_seg_file_name"])
        instances = DatasetCatalog.get(f"{prefix}_train")
        assert len(instances) == 2
        assert all(0 <= a["category_id"] < 4 for r in instances for a in r["annotations"])
    finally:
        for name in names:
            unregister_dataset(name)


@pytest.mark.slow
def test_hcformer_imports_the_shapes_only_for_a_config_naming_them(tmp_path):
    # hcformer never imports hcformer_shapes on its own; registering a config's datasets (what
    # every entry point does) imports it when DATASETS.TRAIN / TEST name a shapes_* dataset.
    # In a fresh process: this one imported hcformer_shapes above.
    script = """
import sys
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
import hcformer
from hcformer.data.datasets import register_datasets_from_config
assert "hcformer_shapes" not in sys.modules, "importing hcformer imported hcformer_shapes"
cfg = get_cfg()
hcformer.add_hcformer_config(cfg)
cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("coco_2017_train_panoptic_with_sem_seg",), ()
register_datasets_from_config(cfg)
assert "hcformer_shapes" not in sys.modules and "shapes_val" not in DatasetCatalog
cfg.DATASETS.TEST = ("shapes_sem_seg_val",)
register_datasets_from_config(cfg)
assert "shapes_val" in DatasetCatalog and "shapes_train_panoptic_with_sem_seg" in DatasetCatalog
"""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "shapes").exists()  # registered, not generated


def test_bad_parameters_name_the_variable(monkeypatch):
    monkeypatch.setenv("HCFORMER_SHAPES_SIZE", "big")
    with pytest.raises(ValueError, match="HCFORMER_SHAPES_SIZE='big'"):
        ShapesSpec.from_env()
    monkeypatch.setenv("HCFORMER_SHAPES_SIZE", "16")
    with pytest.raises(ValueError, match="HCFORMER_SHAPES_SIZE.*>= 32, got 16"):
        ShapesSpec.from_env()


def test_interrupted_generation_leaves_nothing_that_counts(tmp_path, monkeypatch):
    real_write_split = generator._write_split

    def write_train_then_die(directory, spec, split):
        real_write_split(directory, spec, split)
        if split == "train":
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way

    monkeypatch.setattr(generator, "_write_split", write_train_then_die)
    with pytest.raises(KeyboardInterrupt):
        generator.ensure_shapes_dataset(TINY, str(tmp_path))
    shapes = tmp_path / "shapes"
    assert not (shapes / TINY.dirname).exists()
    assert [p.name for p in shapes.iterdir() if ".tmp-" in p.name] == []

    monkeypatch.setattr(generator, "_write_split", real_write_split)
    directory = generator.ensure_shapes_dataset(TINY, str(tmp_path))
    assert json.loads((shapes / TINY.dirname / MARKER_NAME).read_text()) == TINY.manifest()
    assert len(os.listdir(os.path.join(directory, "images", "val"))) == 2


def test_leftovers_of_a_killed_run_are_not_used(tmp_path):
    # A killed process leaves its temporary dir; a copy without marker is also incomplete.
    shapes = tmp_path / "shapes"
    stale = shapes / f".{TINY.dirname}.tmp-dead"
    (stale / "images").mkdir(parents=True)
    unfinished = shapes / TINY.dirname
    (unfinished / "images" / "train").mkdir(parents=True)
    (unfinished / "images" / "train" / "000001.jpg").write_bytes(b"truncated")

    directory = generator.ensure_shapes_dataset(TINY, str(tmp_path))
    assert not stale.exists()
    assert Image.open(os.path.join(directory, "images", "train", "000001.jpg")).size == (48, 48)
    assert os.path.isfile(os.path.join(directory, MARKER_NAME))


def test_a_complete_directory_with_other_parameters_is_never_overwritten(tmp_path):
    directory = tmp_path / "built"
    build_directory_once(str(directory), lambda d: None, {"version": 1})
    with pytest.raises(RuntimeError, match="Delete the directory"):
        build_directory_once(str(directory), lambda d: None, {"version": 2})


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_a_built_directory_follows_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        directory = build_directory_once(str(tmp_path / "built"), lambda d: None, {"version": 1})
    finally:
        os.umask(previous)
    assert os.stat(directory).st_mode & 0o777 == mode


def _build_slowly(directory, log_path):
    def build(tmp_dir):
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # make the two processes overlap
        with open(os.path.join(tmp_dir, "data.txt"), "w") as f:
            f.write("done")

    build_directory_once(directory, build, {"version": 1})


def test_concurrent_processes_build_once(tmp_path):
    directory, log_path = str(tmp_path / "built"), str(tmp_path / "builds.log")
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_build_slowly, args=(directory, log_path)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    with open(log_path) as log:
        assert len(log.read().split()) == 1  # the others waited and reused the result
    assert open(os.path.join(directory, "data.txt")).read() == "done"


@pytest.mark.parametrize(
    "name, expected_folder",
    [
        ("coco_2017_val_panoptic_with_sem_seg", "val2017"),
        ("coco_2017_val", "val2017"),
        ("ade20k_sem_seg_val", "validation"),
        ("cityscapes_fine_sem_seg_val", "val"),
        ("cityscapes_fine_instance_seg_train", "train"),
        # detectron2's own panoptic registrations
        ("coco_2017_val_panoptic", "val2017"),
        ("coco_2017_train_panoptic_separated", "train2017"),
        ("cityscapes_fine_panoptic_val", "val"),
    ],
)
def test_missing_real_dataset_error_names_the_folder(name, expected_folder):
    metadata = MetadataCatalog.get(name)
    root = metadata.get("image_root") or metadata.get("image_dir")
    if os.path.exists(root):
        pytest.skip(f"{name} is installed here")
    with pytest.raises(MissingDatasetError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert name in message and expected_folder in message and "datasets/README.md" in message


@pytest.mark.parametrize(
    "name, missing, how_to_prepare",
    [
        ("coco_2017_val_panoptic", "panoptic_val2017", "panoptic PNGs"),
        ("coco_2017_val_panoptic_separated", "panoptic_stuff_val2017", "prepare_panoptic_fpn.py"),
        ("cityscapes_fine_panoptic_val", "cityscapes_panoptic_val", "createPanopticImgs"),
    ],
)
def test_missing_panoptic_files_are_named_when_everything_else_is_there(
    name, missing, how_to_prepare, tmp_path, monkeypatch
):
    # The check covers what the loader reads beyond the images: with every other path of the
    # metadata present, the error names the panoptic one (not a crash inside the loader).
    metadata = MetadataCatalog.get(name).as_dict()
    paths = [v for k, v in metadata.items() if k.endswith(("_root", "_dir", "_file", "_json"))]
    if any(os.path.isabs(p) for p in paths):
        pytest.skip("$DETECTRON2_DATASETS is absolute here: the fake layout needs a relative one")
    monkeypatch.chdir(tmp_path)
    for path in paths:
        if missing in path:
            continue
        if path.endswith(".json"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        else:
            os.makedirs(path, exist_ok=True)
    with pytest.raises(MissingDatasetError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    named = message.split("expected ")[1].split(" to exist")[0]
    assert os.path.basename(named.strip("'")).startswith(missing), named
    assert name in message and how_to_prepare in message

"""datasets/prepare_panoptic_from_instances.py on a hand-built scene: overlaps, a hole, a crowd
region, an unannotated category, 0- / 1-based and gappy ids; ground truth scored against itself;
bad input named with nothing written."""
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.evaluation import pq_compute
from PIL import Image

from hcformer.data.datasets.register_from_config import register_coco_panoptic_from_files
from tiny_configs import load_script

script = load_script("datasets/prepare_panoptic_from_instances.py")

HEIGHT, WIDTH = 20, 24
# category ids: 1-based with gaps and an unannotated "lamp"; or 0-based with the unannotated
# "_background_" first, as some annotation tools export
ID_SCHEMES = {
    "gappy": {"cup": 1, "table": 5, "lamp": 9},
    "zero_based": {"_background_": 0, "cup": 1, "table": 2, "lamp": 3},
}


def box(top, left, bottom, right):
    """H x W bool mask of rows top..bottom-1, columns left..right-1."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def rle(mask, compressed=True):
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": [HEIGHT, WIDTH], "counts": encoded["counts"].decode("ascii")}
    flat = mask.flatten(order="F")  # column-major runs, starting with a run of zeros
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": ([0] if flat[0] else []) + runs}


def polygon_mask(polygon):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([polygon], HEIGHT, WIDTH))).astype(bool)


TABLE = [1.5, 1.5, 16.5, 1.5, 16.5, 12.5, 1.5, 12.5]  # polygon, rows / columns 2..16 about
CUP = [5.5, 5.5, 8.5, 5.5, 8.5, 8.5, 5.5, 8.5]  # polygon inside the table: smaller, so on top
LEFT, RIGHT = box(14, 1, 18, 5), box(14, 3, 18, 7)  # same area, overlapping: the first listed wins
DONUT = box(13, 15, 19, 22) & ~box(15, 17, 17, 20)  # a hole in the middle
CROWD = box(0, 0, 4, 6)  # overlaps the table's top-left corner


def scene(tmp_path: Path, ids):
    """(instances JSON path, image root) of the hand-built scene; annotation ids are 11, 12, ..."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "scene.png")
    annotations = [
        ("table", TABLE, 0),
        ("cup", CUP, 0),
        ("cup", rle(LEFT, compressed=False), 0),
        ("cup", rle(RIGHT), 0),
        ("table", rle(DONUT), 0),
        ("cup", rle(CROWD, compressed=False), 1),
        ("table", CUP, 0),  # the cup's pixels again, listed later: hidden, dropped
    ]
    content = {
        "images": [{"id": 7, "file_name": "scene.png", "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {
                "id": 11 + i, "image_id": 7, "category_id": ids[name], "iscrowd": crowd,
                "segmentation": [mask] if isinstance(mask, list) else mask,
            }
            for i, (name, mask, crowd) in enumerate(annotations)
        ],
        "categories": [{"id": i, "name": name} for name, i in ids.items()],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return path, images


def read_panoptic(out: Path):
    content = json.loads((out / "panoptic.json").read_text())
    (annotation,) = content["annotations"]
    rgb = np.asarray(Image.open(out / "panoptic" / annotation["file_name"])).astype(np.int64)
    segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    return content, annotation, segment_ids


@pytest.mark.parametrize("scheme", sorted(ID_SCHEMES))
def test_overlaps_holes_crowd_and_ids_of_any_kind(tmp_path, scheme, capsys, dataset_names):
    ids = ID_SCHEMES[scheme]
    json_path, images = scene(tmp_path, ids)
    out = tmp_path / "out"
    assert script.main([str(json_path), str(images), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 annotations (1 crowd, made void; 1 dropped" in printed

    content, annotation, segment_ids = read_panoptic(out)
    stuff_id = max(ids.values()) + 1
    assert content["categories"][-1] == {"id": stuff_id, "name": "background", "supercategory": "", "isthing": 0}
    assert [c["id"] for c in content["categories"][:-1]] == sorted(ids.values())  # unannotated kept
    segments = {s["id"]: s for s in annotation["segments_info"]}
    category = {0: None, **{i: s["category_id"] for i, s in segments.items()}}
    categories = np.vectorize(category.get, otypes=[object])(segment_ids)

    table, cup = polygon_mask(TABLE), polygon_mask(CUP)
    assert cup.sum() > 0 and (table & cup).sum() == cup.sum()
    # the smaller instance keeps the overlap; the table keeps the rest of its mask
    (cup_segment,) = set(segment_ids[cup].tolist())
    assert category[cup_segment] == ids["cup"]
    assert set(categories[table & ~cup & ~CROWD].tolist()) == {ids["table"]}
    # equal areas: the first listed wins the overlap
    (left_segment,) = set(segment_ids[LEFT].tolist())
    assert set(segment_ids[RIGHT & ~LEFT].tolist()) != {left_segment}
    # the hole of the donut is background stuff, the ring one table segment
    assert set(categories[box(15, 17, 17, 20)].tolist()) == {stuff_id}
    assert len(set(segment_ids[DONUT].tolist())) == 1 and categories[DONUT][0] == ids["table"]
    # crowd: void where no other instance is, the table's where it is
    assert set(segment_ids[CROWD & ~table].tolist()) == {0}
    assert set(categories[CROWD & table].tolist()) == {ids["table"]}
    # everything else is the one stuff segment; 6 segments: table, cup, left, right, donut, stuff
    assert set(categories[~(table | cup | LEFT | RIGHT | DONUT | CROWD)].tolist()) == {stuff_id}
    assert len(segments) == 6 and sorted(segments) == sorted(set(np.unique(segment_ids).tolist()) - {0})
    for segment_id, segment in segments.items():
        assert segment["area"] == (segment_ids == segment_id).sum()
        assert segment["iscrowd"] == 0

    # ground truth against itself: PQ 100 (panopticapi, the scorer of the panoptic evaluator)
    panoptic_json = str(out / "panoptic.json")
    results = pq_compute(panoptic_json, panoptic_json, str(out / "panoptic"), str(out / "panoptic"))
    assert results["All"]["pq"] == pytest.approx(1.0)
    assert results["All"]["n"] == 3  # cup, table, background: the categories with segments

    # the semantic PNGs: contiguous ids = rank of the category id
    rank = {category_id: i for i, category_id in enumerate(sorted([*ids.values(), stuff_id]))}
    semantic = np.asarray(Image.open(out / "panoptic_semseg" / "scene.png"))
    assert semantic[cup].tolist() == [rank[ids["cup"]]] * int(cup.sum())
    assert set(semantic[CROWD & ~table].tolist()) == {255}

    # and the output registers as it is: semantic PNGs and instance JSON are found, not derived
    name = f"converted_{scheme}"
    dataset_names.append(name)
    register_coco_panoptic_from_files(name, panoptic_json, str(out / "panoptic"), str(images))
    (record,) = DatasetCatalog.get(name)
    assert record["file_name"] == str(images / "scene.png")
    assert record["sem_seg_file_name"] == str(out / "panoptic_semseg" / "scene.png")
    metadata = MetadataCatalog.get(name)
    assert metadata.stuff_classes == [name for name, _ in sorted(ids.items(), key=lambda kv: kv[1])] + ["background"]
    instances = json.loads(Path(metadata.json_file).read_text())
    assert len(instances["annotations"]) == 5  # the visible thing segments
    assert sorted(p.name for p in out.iterdir()) == [
        "COMPLETE.json", "panoptic", "panoptic.json", "panoptic_instances", "panoptic_semseg"
    ]

    # a rerun finds its own output and does nothing
    assert script.main([str(json_path), str(images), str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_no_stuff_leaves_unannotated_pixels_void(tmp_path):
    json_path, images = scene(tmp_path, ID_SCHEMES["gappy"])
    assert script.main([str(json_path), str(images), str(tmp_path / "out"), "--no-stuff"]) == 0
    content, annotation, segment_ids = read_panoptic(tmp_path / "out")
    assert all(c["isthing"] == 1 for c in content["categories"])
    assert (segment_ids[box(15, 17, 17, 20)] == 0).all()  # the donut's hole
    assert len(annotation["segments_info"]) == 5


def break_polygon(content, images):
    content["annotations"][1]["segmentation"] = [[1, 2, 3, 4, 5]]


def unknown_category(content, images):
    content["annotations"][2]["category_id"] = 77


def clashing_stuff_name(content, images):
    content["categories"][0]["name"] = "background"


def no_categories(content, images):
    content["categories"], content["annotations"] = [], []


def wider_image(content, images):
    Image.new("RGB", (WIDTH + 6, HEIGHT)).save(images / "scene.png")


def missing_image(content, images):
    (images / "scene.png").unlink()


@pytest.mark.parametrize(
    "change, message",
    [
        (break_polygon, "annotation 12 of image 'scene.png': polygon 0 is [1, 2, 3, 4, 5]; expected a flat list"),
        (unknown_category, "annotation 13 has category_id 77, which is not in 'categories'"),
        (clashing_stuff_name, "is already called 'background'; give the pixels in no annotation another name"),
        (no_categories, "expected a non-empty 'categories' list with integer ids, got ids []"),
        (wider_image, "scene.png is 30 x 20 but its dataset record (annotation JSON) says 24 x 20"),
        (missing_image, "image not found: "),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_bad_input_is_named_and_nothing_is_written(tmp_path, capsys, change, message):
    json_path, images = scene(tmp_path, ID_SCHEMES["gappy"])
    content = json.loads(json_path.read_text())
    change(content, images)
    json_path.write_text(json.dumps(content))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert script.main([str(json_path), str(images), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar, if any
    assert error.startswith("error: ") and message in error and error.endswith("nothing written")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == before


def test_an_existing_folder_is_never_overwritten(tmp_path, capsys):
    json_path, images = scene(tmp_path, ID_SCHEMES["gappy"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert script.main([str(json_path), str(images), str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    # another input into a finished conversion: refused, the conversion kept
    other = tmp_path / "other"
    assert script.main([str(json_path), str(images), str(other)]) == 0
    json_path.write_text(json_path.read_text() + " ")
    assert script.main([str(json_path), str(images), str(other)]) == 2
    assert "holds a conversion of another input" in capsys.readouterr().err
    assert (other / "panoptic.json").is_file()

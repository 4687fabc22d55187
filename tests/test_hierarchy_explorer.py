"""The hierarchy explorer (tools/visualize_hierarchy.py --html): its pages hold exactly what the
Python side computed.

The pages are written once per module (explorer_pages.py: the tiny random panoptic HCFormer on
the VOC photo and its mirror image). The cluster maps decoded from a page must equal the
clusterings the model returns for the image, its scores the tool's --json numbers, its ground
truth the segments that were scored. The browser side is tested in
test_hierarchy_explorer_browser.py.
"""
import json
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import read_image

from explorer_pages import decode_picture, write_voc_explorer
from hcformer.engine.inference_model import build_inference_model, inference_cfg
from hcformer.evaluation import leakage_mask, load_segment_ground_truth
from hcformer.utils.embedded_id_maps import MAX_ID, decode_id_map, encode_id_map
from hcformer.evaluation.segment_ground_truth import INSTANCE_IGNORE
from hcformer.utils.hierarchy_page import (
    IGNORED_SEGMENT,
    THUMBNAIL_WIDTH,
    PageClustering,
    image_page_data,
    page_names,
    read_page_data,
    segment_class_names,
    write_page,
)
from tiny_configs import load_script, write_task_config

CLUSTERINGS = ["level0", "level1", "level2", "level3", "queries"]  # finest first, as on the pages


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    return write_voc_explorer(tmp_path_factory.mktemp("explorer"), "voc_explorer_test")


@pytest.fixture(scope="module")
def model_outputs(explorer):
    """The model's outputs for every image, computed here, apart from the tool."""
    cfg = inference_cfg(str(explorer.config), [])
    model = build_inference_model(cfg)
    mapper = DatasetMapper(cfg, is_train=False)
    with torch.no_grad():
        return [model([mapper(dict(record))], clusterings="all")[0] for record in explorer.records]


# ------------------------------------------------------------------ the image pages
def test_the_files_and_that_they_need_nothing_else(explorer):
    assert sorted(str(p.relative_to(explorer.html)) for p in explorer.html.rglob("*.html")) == [
        "images/voc_sample.html", "images/voc_sample_mirrored.html", "index.html"]
    for page in explorer.html.rglob("*.html"):
        text = page.read_text()
        # no file or server to fetch: no external script, style, font or image, no fetch()
        assert not re.search(r"<script[^>]+src=|<link|@import|url\(|fetch\(|XMLHttpRequest", text), page
        assert not re.search(r"""(src|href)=["'](?!#|data:)""", text), page
        assert "{{" not in text  # every placeholder of the template was filled


def test_cluster_maps_are_the_models_clusterings(explorer, model_outputs):
    for record, outputs in zip(explorer.records, model_outputs):
        data = read_page_data(explorer.html / "images" / f"{record['image_id']}.html")
        assert (data["height"], data["width"]) == (record["height"], record["width"])
        assert [c["name"] for c in data["clusterings"]] == CLUSTERINGS
        for clustering in data["clusterings"]:
            expected = outputs["clusterings"][clustering["name"]].numpy()
            decoded = decode_id_map(clustering["map"])
            assert decoded.shape == expected.shape and np.array_equal(decoded, expected), clustering["name"]
            assert clustering["num_clusters"] == len(np.unique(expected))
        strides = [c["stride"] for c in data["clusterings"]]
        assert strides == [outputs["level_strides"][k] for k in range(4)] + [None] == [4, 8, 16, 32, None]


def test_scores_are_the_json_numbers(explorer):
    for entry in explorer.summary["images"]:
        data = read_page_data(explorer.html / "images" / f"{entry['image_id']}.html")
        assert {c["name"]: c["scores"] for c in data["clusterings"]} == entry["scores"]
        assert entry["scores"]["level0"]["UE"] < entry["scores"]["level3"]["UE"]  # scored, not empty


def test_ground_truth_is_the_scored_segments(explorer):
    class_names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                   "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor"]
    for record in explorer.records:
        data = read_page_data(explorer.html / "images" / f"{record['image_id']}.html")
        gt, void = load_segment_ground_truth(record, "panoptic")
        truth = data["ground_truth"]
        assert truth["kind"] == "panoptic"
        ids = np.array([s["id"] for s in truth["segments"]])
        indices = decode_id_map(truth["map"])
        ignored = indices == IGNORED_SEGMENT
        assert np.array_equal(ignored, gt == void)
        assert np.array_equal(ids[indices[~ignored]], gt[~ignored])
        assert list(ids) == sorted(ids)  # index order = id order: the page's ties go to the smaller id
        categories = {s["id"]: s["category_id"] for s in record["segments_info"]}
        assert [s["class"] for s in truth["segments"]] == [class_names[categories[i]] for i in ids]


def test_the_pages_leak_rule_adds_up_to_the_scores(explorer):
    """The page counts a cluster's leaked pixels as its labelled pixels outside its most frequent
    segment (image.js, clusterStatistics): summed over the clusters, that is (1 − ASA)·N, and
    pixel by pixel it is leakage_mask."""
    for entry in explorer.summary["images"]:
        data = read_page_data(explorer.html / "images" / f"{entry['image_id']}.html")
        segments = decode_id_map(data["ground_truth"]["map"])
        labelled = segments != IGNORED_SEGMENT
        for clustering in data["clusterings"]:
            clusters = decode_id_map(clustering["map"])
            scores = clustering["scores"]
            # the page's rule, vectorised: histogram of (cluster, segment), first maximum per cluster
            _, cluster = np.unique(clusters[labelled], return_inverse=True)
            histogram = np.zeros((cluster.max() + 1, segments[labelled].max() + 1), dtype=np.int64)
            np.add.at(histogram, (cluster, segments[labelled]), 1)
            majority = histogram.argmax(1)  # argmax: the first maximum, the smaller segment index
            leaked = labelled.copy()
            leaked[labelled] = segments[labelled] != majority[cluster]
            assert leaked.sum() == entry["num_pixels"] - scores["achievable"], clustering["name"]
            assert np.array_equal(leaked, leakage_mask(segments, clusters, IGNORED_SEGMENT))


def test_pictures_and_links(explorer, model_outputs):
    names = [r["image_id"] for r in explorer.records]
    for i, (record, outputs) in enumerate(zip(explorer.records, model_outputs)):
        data = read_page_data(explorer.html / "images" / f"{names[i]}.html")
        photo = decode_picture(data["photo"]).astype(np.int16)
        assert photo.shape == (record["height"], record["width"], 3)
        # a JPEG (quality 85, chroma subsampled) of this photo: another photo would differ by tens
        assert np.abs(photo - read_image(record["file_name"], format="RGB")).mean() < 8
        assert list(data["predictions"]) == ["panoptic", "instances", "semantic"]  # the panoptic config's outputs
        pictures = {kind: decode_picture(url).astype(np.int16) for kind, url in data["predictions"].items()}
        # what the model gave to draw (the tool's default --confidence-threshold: 0.5); these
        # seeded random weights give no panoptic segment and no instance, only a semantic map
        to_draw = {
            "panoptic": len(outputs["panoptic_seg"][1]) > 0,
            "instances": bool((outputs["instances"].scores >= 0.5).any()),
            "semantic": True,
        }
        for kind, picture in pictures.items():
            assert picture.shape == photo.shape, kind
            difference = np.abs(picture - photo).mean()
            # the output drawn over the photo, or the photo itself, pixel for pixel (JPEG aside)
            assert difference > 1 if to_draw[kind] else difference < 1, (kind, difference)
        assert np.abs(pictures["panoptic"] - pictures["semantic"]).mean() > 1  # not one picture three times
        links = data["links"]
        assert links["index"] == "../index.html" and links["self"] == f"{names[i]}.html"
        assert links["previous"] == (f"{names[i - 1]}.html" if i > 0 else None)
        assert links["next"] == (f"{names[i + 1]}.html" if i + 1 < len(names) else None)


# ------------------------------------------------------------------ the index
def test_index_lists_every_image_with_its_scores(explorer):
    index = read_page_data(explorer.html / "index.html")
    assert index["mean"] == json.loads(json.dumps(explorer.summary["mean"]))
    assert [c["name"] for c in index["clusterings"]] == CLUSTERINGS
    assert [image["image_id"] for image in index["images"]] == [r["image_id"] for r in explorer.records]
    for image, entry in zip(index["images"], explorer.summary["images"]):
        assert (explorer.html / image["page"]).is_file()
        assert {c["name"]: c["scores"] for c in image["clusterings"]} == entry["scores"]
        assert decode_picture(image["thumbnail"]).shape[1] == THUMBNAIL_WIDTH
    ue = [entry["scores"]["level3"]["UE"] for entry in explorer.summary["images"]]
    assert ue[0] != ue[1]  # the mirror image leaks differently: the index has something to sort


# ------------------------------------------------------------------ without ground truth
def test_photos_without_ground_truth(tmp_path, explorer):
    """--input files and --html alone (no panels): the pages have every requested level and the
    query clustering, no ground truth and no scores."""
    script = load_script("tools/visualize_hierarchy.py")
    config = write_task_config(tmp_path, "semantic")
    summary = script.main(["--config-file", str(config), "--input", explorer.records[0]["file_name"],
                           "--levels", "0", "2", "--html", str(tmp_path / "html")])
    assert summary["images"][0]["panels"] == {} and summary["mean"] == {}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["html"]  # no panels written
    data = read_page_data(tmp_path / "html" / "images" / "image.html")
    assert data["ground_truth"] is None
    assert [(c["name"], c["scores"]) for c in data["clusterings"]] == [("level0", None), ("level2", None),
                                                                      ("queries", None)]
    index = read_page_data(tmp_path / "html" / "index.html")
    assert index["mean"] == {} and len(index["images"]) == 1

    with pytest.raises(SystemExit):  # argparse: "nothing to write: give --output DIR ..."
        script.parse_args(["--config-file", str(config), "--input", "x.png"])


# ------------------------------------------------------------------ other ground truths
def test_instance_and_semantic_ground_truth():
    """Instance ids (background 0, crowd ignored as -1) and semantic classes (ignore 255) become
    segments named by their class; the page's ids and the checks on shapes."""
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    clusters = PageClustering("level0", np.arange(24).reshape(4, 6) // 2, stride=4)
    instances = np.array([[0, 0, 1, 1, 2, 2]] * 3 + [[INSTANCE_IGNORE] * 6])
    record = {"annotations": [{"category_id": 2}, {"category_id": 0}]}
    names = segment_class_names(record, "instance", instances, ["cat", "dog", "cow"])
    assert names == {0: "background (no instance)", 1: "cow", 2: "cat"}
    data = image_page_data("x", image, [clusters], gt=instances, ignore_label=INSTANCE_IGNORE,
                           ground_truth_kind="instance", class_names=names)
    truth = data["ground_truth"]
    assert truth["segments"] == [{"id": 0, "class": "background (no instance)"}, {"id": 1, "class": "cow"},
                                 {"id": 2, "class": "cat"}]
    assert np.array_equal(decode_id_map(truth["map"])[3], [IGNORED_SEGMENT] * 6)
    assert np.array_equal(decode_id_map(truth["map"])[:3], instances[:3])

    semantic = np.array([[3, 3, 255, 7, 7, 7]] * 4)
    names = segment_class_names({}, "semantic", semantic, ["a", "b", "c", "d"])
    assert names == {3: "d", 7: "class 7", 255: "class 255"}  # the ignored id is never shown
    with pytest.raises(ValueError, match="ground truth kind must be panoptic, semantic or instance, got 'boxes'"):
        segment_class_names({}, "boxes", semantic, [])
    with pytest.raises(ValueError, match=r"clustering level0 of image 'x' has shape \(4, 6\), expected \(2, 6\)"):
        image_page_data("x", image[:2], [clusters])


# ------------------------------------------------------------------ the format
def test_id_maps_round_trip_and_refuse_what_does_not_fit():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, MAX_ID + 1, size=(7, 13))
    ids[0, :2] = [0, MAX_ID]
    assert np.array_equal(decode_id_map(encode_id_map(ids)), ids)
    blocks = np.kron(np.arange(32 * 64).reshape(32, 64), np.ones((4, 4), dtype=np.int64))  # a stride-4 grid
    assert len(encode_id_map(blocks)) < blocks.size / 4  # PNG's row filters: far below a byte per pixel
    with pytest.raises(ValueError, match=r"level 3 of 'a' has ids in \[-1, 5\]; a page holds ids in \[0, 16777215\]"):
        encode_id_map(np.array([[-1, 5]]), "level 3 of 'a'")
    with pytest.raises(ValueError, match="must be an \\(H, W\\) integer array, got shape \\(2,\\) dtype float64"):
        encode_id_map(np.zeros(2))
    with pytest.raises(ValueError, match="expected a URL starting with 'data:image/png;base64,'"):
        decode_id_map("data:image/jpeg;base64,AAAA")


def test_embedded_text_cannot_end_the_script(tmp_path):
    data = {"image_id": "</script><script>alert(1)</script>", "note": "{{script}}"}
    write_page(tmp_path / "page.html", "index", data, title="<b>title</b>")
    text = (tmp_path / "page.html").read_text()
    assert "</script><script>alert(1)" not in text and "<b>title</b>" not in text
    assert read_page_data(tmp_path / "page.html") == data  # and the data is read back unchanged
    with pytest.raises(ValueError, match="page kind must be 'image' or 'index', got 'summary'"):
        write_page(tmp_path / "page.html", "summary", data, title="")


def test_page_names_are_distinct_file_names():
    assert page_names(["a/b", "a_b", "index", 7]) == ["a_b.html", "a_b_1.html", "index.html", "7.html"]

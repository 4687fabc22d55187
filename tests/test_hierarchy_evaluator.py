"""HierarchyEvaluator on a tiny HCFormer with hand-built panoptic / semantic ground truth.

Geometry of the first image (original size 64 × 96, fed to the model at 32 × 48):

    segment A = columns 0..47 without the top-left 16×16 block (crowd / ignored)   2816 px
    segment B = columns 48..95 without the bottom-right 16×16 block (void / ignored) 2816 px

The second image is one segment of 64 × 96 = 6144 px: every clustering scores UE 0 on it.
"""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from panopticapi.utils import id2rgb
from PIL import Image

from hcformer.evaluation import HierarchyEvaluator
from hcformer.modeling.postprocess import query_clustering
from hcformer.modeling.hierarchy import LocalGridHierarchy

HEIGHT, WIDTH = 64, 96
N1, N2 = 2816 * 2, HEIGHT * WIDTH


def _two_segments(a, b, ignore_a, ignore_b):
    gt = np.full((HEIGHT, WIDTH), b, dtype=np.int64)
    gt[:, :48] = a
    gt[:16, :16] = ignore_a
    gt[48:, 80:] = ignore_b
    return gt


@pytest.fixture
def dataset(tmp_path, request):
    """Two images with ground truth in tmp_path, registered as a panoptic or semantic dataset."""
    kind = request.param
    name = f"hierarchy_evaltest_{kind}"
    records = []
    for i in range(2):
        record = {"file_name": str(tmp_path / f"{i}.jpg"), "image_id": i, "height": HEIGHT, "width": WIDTH}
        if kind == "panoptic":
            # A = 1, B = 2, crowd = 3, void = 0; the second image is segment 5 everywhere
            ids = _two_segments(1, 2, 3, 0) if i == 0 else np.full((HEIGHT, WIDTH), 5)
            record["pan_seg_file_name"] = str(tmp_path / f"{i}_pan.png")
            Image.fromarray(id2rgb(ids)).save(record["pan_seg_file_name"])
            record["segments_info"] = [
                {"id": 1, "category_id": 0, "iscrowd": 0},
                {"id": 2, "category_id": 1, "iscrowd": 0},
                {"id": 3, "category_id": 0, "iscrowd": 1},
                {"id": 5, "category_id": 1, "iscrowd": 0},
            ]
        else:
            classes = _two_segments(3, 5, 255, 255) if i == 0 else np.full((HEIGHT, WIDTH), 2)
            record["sem_seg_file_name"] = str(tmp_path / f"{i}_sem.png")
            Image.fromarray(classes.astype(np.uint8)).save(record["sem_seg_file_name"])
        records.append(record)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        evaluator_type="coco_panoptic_seg" if kind == "panoptic" else "sem_seg", ignore_label=255
    )
    yield name, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _model_inputs(records):
    """What a test mapper gives: a downscaled image, no semantic file name (DatasetMapper drops it)."""
    torch.manual_seed(0)
    inputs = []
    for r in records:
        x = {k: v for k, v in r.items() if k != "sem_seg_file_name"}
        x["image"] = torch.rand(3, HEIGHT // 2, WIDTH // 2) * 255
        inputs.append(x)
    return inputs


def _fake_hard_labels(self, level, output_size=None):
    """Level 0 follows the A | B boundary; coarser levels split at column 32 instead.

    Maps are at the padded input size 32 × 64 (image 32 × 48 + padding, the padding a cluster
    of its own that the crop must remove), i.e. half the original resolution.
    """
    assert output_size == (32, 64)
    labels = torch.full((2, 32, 64), 7, dtype=torch.int64)
    split = 24 if level == 0 else 16
    labels[:, :, :split] = 0
    labels[:, :, split:48] = 1
    return labels


@pytest.mark.parametrize("dataset", ["panoptic", "semantic"], indirect=True)
def test_scores_of_known_clusterings_from_the_models_outputs(make_cfg, dataset, tmp_path, monkeypatch):
    name, records = dataset
    model = build_model(make_cfg(**{"TEST.HIERARCHY_EVAL": True})).eval()  # outputs carry "clusterings"
    monkeypatch.setattr(LocalGridHierarchy, "hard_labels", _fake_hard_labels)
    runs = []
    original_run = model.run
    monkeypatch.setattr(model, "run", lambda images: runs.append(1) or original_run(images))

    evaluator = HierarchyEvaluator(name, model, output_dir=str(tmp_path / "out"))
    results = inference_on_dataset(model, [_model_inputs(records)], evaluator)["hierarchy"]
    assert len(runs) == 1  # the evaluator scored the inference forward pass's own clusterings

    levels = len(model.backbone.clustering_layers)
    assert list(results) == [f"{m}_level{k}" for k in range(levels + 1) for m in ("UE", "ASA")] + [
        "UE_queries",
        "ASA_queries",
    ]
    assert all(0.0 <= v <= 1.0 for v in results.values())
    # level 0 respects the segments
    assert results["UE_level0"] == 0.0 and results["ASA_level0"] == 1.0
    # split at column 32: cluster X = A[:, :32], cluster Y = A[:, 32:48] (1024 px) + B (2816 px).
    # UE charges min(1024, 2816) for A and min(2816, 1024) for B; ASA loses the 1024 px.
    # Pixel-weighted with the second image (6144 px, UE 0, ASA 1).
    for k in range(1, levels + 1):
        assert results[f"UE_level{k}"] == pytest.approx(2048 / (N1 + N2))
        assert results[f"ASA_level{k}"] == pytest.approx((N1 - 1024 + N2) / (N1 + N2))

    saved = json.loads((tmp_path / "out" / "hierarchy_evaluation.json").read_text())
    assert [im["num_pixels"] for im in saved["images"]] == [N1, N2]
    assert saved["images"][0]["UE_level1"] == pytest.approx(2048 / N1)
    assert saved["images"][1]["UE_queries"] == 0.0  # one segment: no clustering can leak


@pytest.mark.parametrize("dataset", ["panoptic"], indirect=True)
def test_outputs_without_clusterings_make_the_model_run_again_with_the_same_result(make_cfg, dataset):
    name, records = dataset
    model = build_model(make_cfg(**{"TEST.HIERARCHY_EVAL": True})).eval()
    inputs = _model_inputs(records)
    direct = inference_on_dataset(model, [inputs], HierarchyEvaluator(name, model))

    evaluator = HierarchyEvaluator(name, model)
    evaluator.reset()
    evaluator.process(inputs, [{}, {}])  # as under test-time augmentation: no one forward pass
    assert evaluator.evaluate() == direct


def test_query_clustering_follows_appendix_e():
    # K = 2 classes + no object; query 1 predicts "no object" (0.55) and never wins, although at
    # pixel 2 its best class times its mask, 0.4·σ(9) ≈ 0.40, beats the other queries
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.05, 0.55], [0.2, 0.5, 0.3]]))
    masks = torch.tensor([[0.0, 2.0, -1.0], [0.0, 9.0, 9.0], [1.0, 0.0, 1.0]])[:, None, :]  # (3, 1, 3)
    # pixel 0: 0.8·σ(0)=0.40 vs 0.5·σ(1)=0.37 → 0;  pixel 1: 0.8·σ(2)=0.70 → 0;
    # pixel 2: 0.8·σ(-1)=0.22 < 0.5·σ(1)=0.37 → 2
    assert query_clustering(logits, masks).tolist() == [[0, 0, 2]]
    # every query "no object": all compete with their best class (0.2 and 0.3)
    void = torch.log(torch.tensor([[0.2, 0.1, 0.7], [0.1, 0.3, 0.6]]))
    masks = torch.tensor([[5.0, 0.0], [0.0, 1.0]])[:, None, :]
    # pixel 0: 0.2·σ(5)=0.199 vs 0.3·σ(0)=0.15 → 0; pixel 1: 0.2·σ(0)=0.10 vs 0.3·σ(1)=0.22 → 1
    assert query_clustering(void, masks).tolist() == [[0, 1]]

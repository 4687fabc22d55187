"""tools/sweep_trained.py's core on a randomly initialised shapes HC-Swin and 2 tiny images."""
import importlib.util
import json
from pathlib import Path

import pytest

from expedit.analysis import valid_alphas

from hcformer.data.datasets.catalog_utils import unregister_dataset
from hcformer.engine.inference_model import inference_cfg
from hcformer_shapes.generator import ShapesSpec
from hcformer_shapes.register import register_shapes_datasets

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "expedit_sweep_test"


def load_tool():
    spec = importlib.util.spec_from_file_location("sweep_trained", PROJECT / "tools" / "sweep_trained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_shapes(tmp_path):
    """2 val images of 64 px (stage 3: 4 × 4 tokens, one zero-padded 8 × 8 window)."""
    names = register_shapes_datasets(str(tmp_path), ShapesSpec(image_size=64, num_train=1, num_val=2), prefix=PREFIX, replace=True)
    yield f"{PREFIX}_val_panoptic_with_sem_seg"
    for name in names:
        unregister_dataset(name)


@pytest.mark.slow
def test_sweep_core(tiny_shapes, tmp_path):
    tool = load_tool()
    cfg = inference_cfg(
        str(tool.DEFAULT_CONFIG),
        [
            "DATASETS.TEST", f"('{tiny_shapes}',)",
            "INPUT.MIN_SIZE_TEST", "64",
            "DATALOADER.NUM_WORKERS", "0",
            # one-hot assignments: at k = K the clusters are the tokens (the original model)
            "MODEL.EXPEDIT.TEMPERATURE", "50.0",
        ],
    )
    assert valid_alphas(cfg) == [4, 5]  # depths 2-2-2-2, stage 2 = blocks 4..5
    K = cfg.MODEL.SWIN.WINDOW_SIZE
    sweep = tool.run_sweep(cfg, alphas=[4], windows=[3, K], latency_runs=1, warmup=0, progress=False)

    setting, original, runs = sweep["setting"], sweep["original"], sweep["runs"]
    assert setting["images"] == original["images"] == 2 and setting["input"] == [64, 64]
    assert setting["alphas"] == [4] and setting["windows"] == [3, K]
    assert set(original["metrics"]) == {"PQ", "PQ_th", "PQ_st", "mIoU", "AP"}
    assert [(r["alpha"], r["k"]) for r in runs] == [(4, 3), (4, K)]
    reduced, same = runs
    for run in runs:
        assert run["metrics"].keys() == original["metrics"].keys()
        assert run["latency_s"] > 0 and run["original_latency_s"] > 0
        assert run["latency_ratio"] == pytest.approx(run["latency_s"] / run["original_latency_s"])
        assert run["gflops"]["expedit clustering"] > 0
        assert all(0 < c <= 1 + 1e-5 for c in run["cosine"].values())
    # no reduction: the original features and predictions
    assert same["cosine"]["res4"] == pytest.approx(1, abs=1e-4) and same["cosine"]["res5"] == pytest.approx(1, abs=1e-4)
    assert same["metrics"] == pytest.approx(original["metrics"], abs=1e-6)
    # (plus what fvcore traces of the clustering: the initial pooling, the bias-table resizing)
    assert same["gflops"]["swin"] == pytest.approx(original["gflops"]["swin"], rel=1e-3)
    # 3 × 3 clusters per window: fewer FLOPs, features no longer the same
    assert reduced["cosine"]["res4"] < 0.9999
    assert reduced["gflops"]["stage 3"] < original["gflops"]["stage 3"]
    assert reduced["gflops"]["backbone"] < original["gflops"]["backbone"]

    table = tool.write(sweep, tmp_path / "out")
    assert table.count("\n") == 2 + 1 + len(runs)
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["runs"][0]["k"] == 3
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0

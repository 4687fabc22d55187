"""tools/time_shapes_models.py: the rounds interleave the two models in alternating order and
leave the warm-up out, and one short real run on a tiny shapes set times both models."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hcformer_shapes import ShapesSpec, register_shapes_datasets

PROJECT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("time_shapes_models", PROJECT / "tools" / "time_shapes_models.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_rounds_alternate_the_order_and_skip_the_warmup(monkeypatch):
    tool = _load_tool()
    cpu = SimpleNamespace(device=torch.device("cpu"))
    models = [tool.TimedModel(name, None, cpu, None, [None] * 4, []) for name in ("A", "B")]
    calls = []
    # each fake measurement returns its call number, so the kept times show which calls counted
    monkeypatch.setattr(tool, "train_step", lambda timed, batch, now: calls.append(timed.name) or len(calls))
    monkeypatch.setattr(tool, "inference", lambda timed, n, now: -len(calls))
    tool.measure(models, rounds=3, warmup=1, calls=1)
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert models[0].train_step_s == [4, 5, 8] and models[1].train_step_s == [3, 6, 7]
    assert models[0].inference_s == [-4, -5, -8]


def test_a_short_run_times_both_models(tmp_path: Path):
    spec = ShapesSpec(image_size=64, num_train=4, num_val=2)
    register_shapes_datasets(str(tmp_path / "datasets"), spec, prefix="paca_timing", replace=True)
    out = tmp_path / "timings.json"
    result = _load_tool().main([
        "--rounds", "2", "--warmup", "0", "--inference-calls", "1", "--json", str(out),
        "DATASETS.TRAIN", "('paca_timing_sem_seg_train',)", "DATASETS.TEST", "('paca_timing_sem_seg_val',)",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
        "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "MODEL.DEVICE", "cpu",
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(result["models"]) == ["HCFormer + HC-PaCa-Tiny", "PaCa head + PaCa-Tiny"]
    for times in result["models"].values():
        assert len(times["train_step_s"]) == len(times["inference_s"]) == 2
        assert all(t > 0 for t in times["train_step_s"] + times["inference_s"])
        assert times["median_inference_ms"] == pytest.approx(500 * sum(times["inference_s"]))  # median of two
        assert times["batch_size"] == 2

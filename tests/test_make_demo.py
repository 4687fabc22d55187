"""`make demo` (tools/demo_shapes.py) end to end: training, evaluation, summary, hierarchy panels."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_make_demo_script_trains_evaluates_and_draws(tmp_path):
    """tools/demo_shapes.py (what `make demo` runs) end to end, with a tiny model and dataset."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), HCFORMER_SHAPES_SIZE="64",
               HCFORMER_SHAPES_TRAIN="4", HCFORMER_SHAPES_VAL="2", OMP_NUM_THREADS="1")
    out = tmp_path / "demo"
    tiny = [
        "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "MODEL.MASK_FORMER.HIDDEN_DIM", "64",
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "DATALOADER.NUM_WORKERS", "0",
        # the CPU's run (its malloc line below) also where a GPU is; tests/test_cuda.py trains there
        "MODEL.DEVICE", "cpu",
    ]
    result = subprocess.run(
        [sys.executable, str(root / "tools/demo_shapes.py"), "--output", str(out), "--num-panels", "2", *tiny],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("PQ", "PQ_th", "PQ_st", "AP", "mIoU", "UE_level0", "ASA_level3", "UE_queries"):
        assert key in summary, key
    assert 0 <= summary["UE_level0"] <= summary["UE_level3"] <= 1  # nested: UE grows with the level
    assert summary["iterations"] == 3 and (out / "model_final.pth").is_file()
    assert len(list((out / "hierarchy").glob("*_hierarchy.png"))) == 2
    assert "UE_level0" in result.stdout  # the printed summary
    log = (out / "log.txt").read_text()
    assert log.count("Start inference on") == 1, "the trained model was evaluated more than once"
    # training, then drawing in the same process: the allocator setting is said once
    assert (result.stdout + result.stderr).count("malloc: ") == 1

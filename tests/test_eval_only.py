"""``train_net.py --eval-only``: a checkpoint written by training is evaluated on its own and
scores exactly what the training run's final evaluation scored (the weights were loaded, not a
new random model), with finite PQ, mIoU and mask AP; it writes into a directory of its own and
leaves the training's files alone.

Runs train_net.py in subprocesses, as a user would, with a tiny model on tiny generated shapes.
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
from tiny_configs import ROOT, SHAPES_CONFIG, TINY_SHAPES_OVERRIDES

# Small enough that training two iterations and evaluating twice stays well under a minute.
TINY = TINY_SHAPES_OVERRIDES + [
    "SOLVER.WARMUP_ITERS", "1", "DATASETS.TEST", "('shapes_val_panoptic_with_sem_seg',)"
]
EXPECTED_METRICS = {"panoptic_seg": "PQ", "sem_seg": "mIoU", "segm": "AP"}


Metrics = Dict[str, Dict[str, float]]


def train_net(tmp_path: Path, output: str, *arguments: str) -> Tuple[Metrics, str]:
    """Run train_net.py; return the metrics its log reports (detectron2's "copypaste" lines)
    and the log (with --eval-only, that of OUTPUT_DIR/eval_<checkpoint>)."""
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(tmp_path / "datasets"),
        HCFORMER_SHAPES_SIZE="64",
        HCFORMER_SHAPES_TRAIN="2",
        HCFORMER_SHAPES_VAL="2",
        OMP_NUM_THREADS="1",
    )
    out = tmp_path / output
    command = [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(SHAPES_CONFIG)]
    command += [*arguments, *TINY, "OUTPUT_DIR", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (log_file,) = out.glob("eval_*/log.txt") if "--eval-only" in arguments else [out / "log.txt"]
    log = log_file.read_text()
    return read_copypaste(log), log


def read_copypaste(log: str) -> Metrics:
    """{task: {metric: value}} from the lines detectron2's print_csv_format logs: "Task: X",
    then the metric names, then their values (the last report of each task wins)."""
    lines = re.findall(r"copypaste: (.*)", log)
    results = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            results[line[len("Task: "):]] = dict(zip(names, map(float, values)))
    return results


def without_nan(results: Metrics) -> Dict[str, Dict[str, object]]:
    """NaN (e.g. APl when no object is large) as a string, so that equal reports compare equal."""
    return {t: {k: "nan" if math.isnan(v) else v for k, v in m.items()} for t, m in results.items()}


@pytest.mark.slow
def test_eval_only_reproduces_the_final_evaluation_of_training(tmp_path):
    # Two iterations; DATASETS.TEST makes training evaluate model_final once at the end. The
    # seed makes that run reproducible and is one whose model gets mIoU > 0 (not all zeros).
    trained, _ = train_net(
        tmp_path, "train", "SEED", "0", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2",
        "SOLVER.CHECKPOINT_PERIOD", "100",
    )
    assert trained["sem_seg"]["mIoU"] > 0
    weights = tmp_path / "train" / "model_final.pth"
    assert weights.is_file()
    training_files = {p.name: p.read_bytes() for p in (tmp_path / "train").iterdir() if p.is_file()}

    # in the training's OUTPUT_DIR, as a user would; no SEED: a model that was not loaded would
    # be a new random one
    evaluated, log = train_net(tmp_path, "train", "--eval-only", "MODEL.WEIGHTS", str(weights))
    assert f"Loading from {weights}" in log
    assert "Starting training" not in log
    for task, metric in EXPECTED_METRICS.items():
        assert task in evaluated, f"--eval-only reported no {task} (got {sorted(evaluated)})"
        assert math.isfinite(evaluated[task][metric]), (task, evaluated[task])
        assert 0 <= evaluated[task][metric] <= 100
    assert set(evaluated["panoptic_seg"]) >= {"PQ", "SQ", "RQ"}
    # Same weights, same images, deterministic CPU inference: the very same numbers.
    assert without_nan(evaluated) == without_nan(trained)
    # its config.yaml, log.txt and predictions went to train/eval_model_final/
    assert {p.name: p.read_bytes() for p in (tmp_path / "train").iterdir() if p.is_file()} == training_files
    assert (tmp_path / "train" / "eval_model_final" / "inference" / "coco_instances_results.json").is_file()

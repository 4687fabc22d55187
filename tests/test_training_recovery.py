"""Training that nothing loses: a NaN loss stops it cleanly, a SIGKILL is resumed where the last
checkpoint left off, and several CPU processes train one model.

The last two run train_net.py / tests/distributed_probe.py in subprocesses on a tiny generated
shapes set with a tiny model.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from hcformer.config import add_hcformer_config
from hcformer.engine.loss_guard import NonFiniteLossError, non_finite_terms

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = ROOT / "configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "INPUT.RANDOM_FLIP", "none",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "64", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "SOLVER.WARMUP_ITERS", "2",
    "DATASETS.TEST", "()", "TEST.HIERARCHY_EVAL", "False",
]


def subprocess_env(datasets: Path) -> dict:
    env = dict(os.environ)
    env.update(
        DETECTRON2_DATASETS=str(datasets),
        HCFORMER_SHAPES_SIZE="64",
        HCFORMER_SHAPES_TRAIN="4",
        HCFORMER_SHAPES_VAL="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def test_non_finite_terms_are_named():
    losses = {"loss_ce": torch.tensor(0.5), "loss_mask": torch.tensor(float("nan")), "loss_dice": torch.tensor([1.0, float("inf")])}
    bad = non_finite_terms(losses)
    assert sorted(bad) == ["loss_dice", "loss_mask"]


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from hcformer.data import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    register_shapes_datasets(str(tmp_path / "datasets"), ShapesSpec(image_size=64, num_train=4, num_val=1),
                             prefix="nan_shapes", replace=True)
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(SHAPES_CONFIG))
    cfg.merge_from_list(TINY + [
        "DATASETS.TRAIN", "('nan_shapes_train_panoptic_with_sem_seg',)", "SOLVER.IMS_PER_BATCH", "1",
        "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    (tmp_path / "out").mkdir()  # train_net's setup() would make it
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward

    def diverge_at_iteration_3(*args, **kwargs):
        losses = forward(*args, **kwargs)
        if trainer.iter == 3:  # the last iteration: detectron2 would save model_final after it
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    model.forward = diverge_at_iteration_3
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("Non-finite loss at iteration 3: loss_mask=nan")
    assert "loss_ce" in message.split("finite:")[1]  # the finite terms are listed as such
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    checkpoints = sorted(p.name for p in out.glob("*.pth"))
    assert checkpoints == ["model_0000001.pth"], checkpoints  # nothing of the diverged state


def wait_for_checkpoint(process, out: Path, at_least: int, timeout: float) -> int:
    """Poll last_checkpoint until it names iteration >= ``at_least``; return that iteration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tag = out / "last_checkpoint"
        if tag.exists():
            name = tag.read_text().strip()
            if name.startswith("model_0") and int(name[6:13]) >= at_least:
                return int(name[6:13])
        if process.poll() is not None:
            raise AssertionError(f"training ended (rc {process.returncode}) before checkpoint {at_least}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {at_least} after {timeout} s")


@pytest.mark.slow
def test_sigkill_then_resume_continues_iteration_lr_and_optimizer(tmp_path):
    out = tmp_path / "out"
    max_iter = 10
    command = [
        sys.executable, str(ROOT / "train_net.py"), "--config-file", str(SHAPES_CONFIG), *TINY,
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "(6,)",
        "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out),
    ]
    env = subprocess_env(tmp_path / "datasets")
    target = random.choice([1, 3, 5])  # kill after a random checkpoint...
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        killed_after = wait_for_checkpoint(process, out, target, timeout=120)
        time.sleep(random.uniform(0.0, 0.3))  # ...and somewhere inside the next iterations
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed_from = out / (out / "last_checkpoint").read_text().strip()
    start = torch.load(resumed_from, weights_only=True)
    assert start["iteration"] >= killed_after
    # a kill in the middle of a save may leave that save's temporary file: the resume removes it

    log_before = (out / "log.txt").read_text()
    resume = command[:2] + ["--resume"] + command[2:]  # options before the KEY VALUE overrides
    result = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "log.txt").read_text()[len(log_before):]
    assert f"Starting training from iteration {start['iteration'] + 1}" in log
    assert f"Loading trainer from {resumed_from}" in log  # optimizer, scheduler, iteration
    assert not list(out.glob(".*.tmp")), "a temporary checkpoint was left behind"

    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == max_iter - 1
    state = final["trainer"]
    # the optimizer continued: AdamW counted every step of both runs, not only the resumed ones
    steps = {float(s["step"]) for s in state["_trainer"]["optimizer"]["state"].values()}
    assert steps == {float(max_iter)}, steps
    # the LR schedule continued: past the step at 6, every group at base LR x 0.1
    scheduler = next(v for k, v in state["hooks"].items() if "LRScheduler" in k)
    assert scheduler["last_epoch"] == max_iter
    base_lrs = scheduler["base_lrs"]
    lrs = [group["lr"] for group in state["_trainer"]["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([0.1 * lr for lr in base_lrs])
    started = start["trainer"]["_trainer"]["optimizer"]["state"]
    assert {float(s["step"]) for s in started.values()} == {float(start["iteration"] + 1)}


@pytest.mark.slow
def test_two_cpu_processes_train_one_model(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, str(ROOT / "tests/distributed_probe.py"), "--num-gpus", "2",
        "--config-file", str(SHAPES_CONFIG), *TINY, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out),
    ]
    result = subprocess.run(command, env=subprocess_env(tmp_path / "datasets"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["local_rank"] for r in ranks] == [0, 1]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # same weights on both ranks: same loss
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert [r["saves"] for r in ranks] == [True, False]  # rank 0 alone writes checkpoints
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"

"""Training that nothing loses: a NaN loss stops it cleanly (on every process, whichever
diverged), a SIGKILL is resumed where the last checkpoint left off with the optimizer and the
AMP grad scaler, and several CPU processes train one model.

The SIGKILL and multi-process tests run train_net.py / tests/distributed_probe.py in
subprocesses on a tiny generated shapes set with a tiny model.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from detectron2.config import get_cfg

from hcformer.config import add_hcformer_config
from hcformer.engine.loss_guard import NonFiniteLossError, non_finite_terms
from tiny_configs import ROOT, SHAPES_CONFIG, TINY_SHAPES_OVERRIDES

TINY = TINY_SHAPES_OVERRIDES + ["SOLVER.WARMUP_ITERS", "2", "DATASETS.TEST", "()"]


def subprocess_env(datasets: Path) -> dict:
    env = dict(os.environ)
    env.update(
        DETECTRON2_DATASETS=str(datasets),
        HCFORMER_SHAPES_SIZE="64",
        HCFORMER_SHAPES_TRAIN="4",
        HCFORMER_SHAPES_VAL="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        # CPU processes (gloo) also on a machine with GPUs: the launcher picks NCCL and one
        # process per GPU wherever torch sees CUDA
        CUDA_VISIBLE_DEVICES="",
    )
    return env


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_non_finite_terms_are_named():
    losses = {"loss_ce": torch.tensor(0.5), "loss_mask": torch.tensor(float("nan")), "loss_dice": torch.tensor([1.0, float("inf")])}
    bad = non_finite_terms(losses)
    assert sorted(bad) == ["loss_dice", "loss_mask"]


def tiny_shapes_cfg(tmp_path: Path, prefix: str, *overrides: str, num_train: int = 4):
    """The tiny shapes model's config, batch 1, on ``num_train`` generated 64 px images,
    writing to tmp_path/out (created), with ``overrides`` (KEY VALUE ...) on top."""
    from hcformer_shapes import ShapesSpec, register_shapes_datasets

    register_shapes_datasets(str(tmp_path / "datasets"), ShapesSpec(image_size=64, num_train=num_train, num_val=1),
                             prefix=prefix, replace=True)
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(SHAPES_CONFIG))
    cfg.merge_from_list(TINY + [
        "DATASETS.TRAIN", f"('{prefix}_train_panoptic_with_sem_seg',)", "SOLVER.IMS_PER_BATCH", "1",
        "OUTPUT_DIR", str(tmp_path / "out"), *overrides,
    ])
    (tmp_path / "out").mkdir(exist_ok=True)  # train_net's setup() would make it
    return cfg


def tiny_shapes_trainer(tmp_path: Path, prefix: str, max_iter: int, checkpoint_period: int):
    """A Trainer of ``tiny_shapes_cfg``."""
    from hcformer.engine.trainer import Trainer

    return Trainer(tiny_shapes_cfg(
        tmp_path, prefix, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period)
    ))


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = tiny_shapes_trainer(tmp_path, "nan_shapes", max_iter=4, checkpoint_period=2)
    trainer.resume_or_load(resume=False)
    criterion = trainer.model.criterion
    criterion_forward = criterion.forward

    good_checkpoint_hash = None

    def diverge_at_iteration_3(*args, **kwargs):
        nonlocal good_checkpoint_hash
        losses = criterion_forward(*args, **kwargs)
        if trainer.iter == 3:  # the last iteration: detectron2 would save model_final after it
            good_checkpoint_hash = sha256(tmp_path / "out/model_0000001.pth")  # saved after iteration 1
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    criterion.forward = diverge_at_iteration_3  # inside the model: its check sees the NaN
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("Non-finite loss at iteration 3: loss_mask=nan")
    assert "loss_ce" in message.split("finite:")[1]  # the finite terms are listed as such
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    checkpoints = sorted(p.name for p in out.glob("*.pth"))
    assert checkpoints == ["model_0000001.pth"], checkpoints  # nothing of the diverged state
    assert sha256(out / "model_0000001.pth") == good_checkpoint_hash  # not rewritten either


@pytest.mark.slow
def test_nan_weights_stop_training_at_the_loss_guard(tmp_path):
    # a real divergence (e.g. SOLVER.BASE_LR 1e8): the weights, and so every prediction, are
    # NaN; the Hungarian matcher must let them through for the guard to name iteration and terms
    trainer = tiny_shapes_trainer(tmp_path, "nanw_shapes", max_iter=3, checkpoint_period=1)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward

    def poison_at_iteration_1(*args, **kwargs):
        if trainer.iter == 1:
            with torch.no_grad():
                model.backbone.stem[0].weight.fill_(float("nan"))
        return forward(*args, **kwargs)

    model.forward = poison_at_iteration_1
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("Non-finite loss at iteration 1: ")
    assert "loss_ce=nan" in message and "loss_mask=nan" in message
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000000.pth"]


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
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Killed after a checkpoint and resumed, a run continues the iteration, LR schedule,
    optimizer, data stream and random streams (flips, point sampling): its final weights are
    bitwise those of the same run never interrupted (CPU, fixed seed, NUM_WORKERS 0)."""
    out = tmp_path / "out"
    max_iter = 10

    def command(output_dir: Path) -> list:
        return [
            sys.executable, str(ROOT / "train_net.py"), "--config-file", str(SHAPES_CONFIG), *TINY,
            "INPUT.RANDOM_FLIP", "horizontal", "SEED", "7",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "(6,)",
            "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(output_dir),
        ]

    env = subprocess_env(tmp_path / "datasets")
    uninterrupted = subprocess.run(command(tmp_path / "uninterrupted"), env=env, capture_output=True, text=True,
                                   timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    command = command(out)
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

    expected = torch.load(tmp_path / "uninterrupted" / "model_final.pth", weights_only=True)["model"]
    assert sorted(final["model"]) == sorted(expected)
    differing = [k for k, v in final["model"].items() if not torch.equal(v, expected[k])]
    assert differing == [], f"{len(differing)} tensors differ from the uninterrupted run, e.g. {differing[:3]}"


@pytest.mark.slow
def test_two_cpu_processes_train_one_model(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, str(ROOT / "tests/distributed_probe.py"), "--num-gpus", "2",
        # a free port: detectron2's default one is fixed per user, and tests run side by side
        "--dist-url", "auto",
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


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(tmp_path):
    """Two gloo processes with one image each end with the weights of one process with both:
    the same images (detectron2's sampler shards one stream), the same random points (per-image
    generators), loss normalisers summed over processes (SetCriterion) and averaged gradients
    (DDP). FrozenBN, as the R50 configs: BN normalises each process's images alone, as in
    detectron2; naiveSyncBN / SyncBN share the statistics (README, "Several processes")."""
    def train(output_dir: Path, *launch: str) -> dict:
        command = [
            sys.executable, str(ROOT / "train_net.py"), *launch, "--config-file", str(SHAPES_CONFIG), *TINY,
            "SEED", "3", "MODEL.RESNETS.NORM", "FrozenBN", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", str(output_dir),
        ]
        result = subprocess.run(command, env=subprocess_env(tmp_path / "datasets"), capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return torch.load(output_dir / "model_final.pth", weights_only=True)["model"]

    one = train(tmp_path / "one")
    two = train(tmp_path / "two", "--num-gpus", "2", "--dist-url", "auto")
    assert sorted(one) == sorted(two)
    worst = {k: float((one[k].double() - two[k].double()).abs().max()) for k in one if one[k].is_floating_point()}
    # Rounding only: oneDNN sums a channels-last conv's weight gradient in another order for one
    # image than for two (measured: 1.07e-5 at most after 4 AdamW steps), while each AdamW step
    # moves a weight by up to the learning rate (3e-4), which other points or normalisers would.
    assert max(worst.values()) < 2e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.slow
def test_nan_on_one_of_two_processes_stops_both(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, str(ROOT / "tests/distributed_probe.py"), "--num-gpus", "2",
        # a free port: detectron2's default one is fixed per user, and tests run side by side
        "--dist-url", "auto",
        "--nan-on-rank", "1", "--nan-at-iter", "2",
        "--config-file", str(SHAPES_CONFIG), *TINY, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out),
    ]
    # before the guard was collective, rank 0 went on into the gradient all-reduce alone: a hang
    # (the process group's timeout is 30 minutes) or a crash without the message
    result = subprocess.run(command, env=subprocess_env(tmp_path / "datasets"), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode != 0
    assert "NonFiniteLossError" in result.stderr
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:  # both stopped at the barrier after the error, with the same message
        assert rank["error"].startswith("Non-finite loss at iteration 2 on rank 1: loss_mask=nan"), rank
        assert "on rank 0" not in rank["error"]
        assert rank["saves"] is False
    assert ranks[0]["error"] == ranks[1]["error"]
    # rank 0, whose loss was finite, wrote no checkpoint of the diverged state
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"


def cpu_amp_trainer(cfg, scaler: torch.amp.GradScaler):
    """Our Trainer with SOLVER.AMP.ENABLED on a CPU: detectron2's AMPTrainer, given a CPU grad
    scaler (its default, a CUDA one, disables itself without CUDA) and let past its "CUDA is
    required" assert. Its autocast is CUDA's, which leaves CPU tensors in float32; scaling,
    unscaling, the inf/NaN check and the scale updates are torch's GradScaler as on a GPU."""
    from detectron2.engine import AMPTrainer

    from hcformer.engine.trainer import Trainer

    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    trainer._trainer.grad_scaler = scaler
    run_step = trainer._trainer.run_step
    is_available = torch.cuda.is_available

    def cuda_for_the_assert_only() -> bool:
        # anything else asking (autocast, the optimizer) must still see the machine as it is
        return sys._getframe(1).f_globals.get("__name__") == "detectron2.engine.train_loop" or is_available()

    def run_step_past_the_cuda_assert():
        with mock.patch.object(torch.cuda, "is_available", cuda_for_the_assert_only):
            run_step()

    trainer._trainer.run_step = run_step_past_the_cuda_assert
    return trainer


@pytest.mark.slow
def test_resume_restores_the_amp_grad_scaler(tmp_path):
    out = tmp_path / "out"
    cfg = tiny_shapes_cfg(
        tmp_path, "amp_shapes", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.AMP.ENABLED", "True", "MODEL.WEIGHTS_IGNORE", "['sem_seg_head.predictor.class_embed']",
    )
    # the scale doubles after every 3 steps without inf/NaN gradients
    trainer = cpu_amp_trainer(cfg, torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3))
    trainer.resume_or_load(resume=False)
    trainer.train()  # iterations 0-3: 4 steps

    def scaler_in(name: str) -> dict:
        return torch.load(out / name, weights_only=True)["trainer"]["_trainer"]["grad_scaler"]

    assert scaler_in("model_0000001.pth") == {  # after 2 steps
        "scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3,
        "_growth_tracker": 2,
    }
    saved = scaler_in("model_final.pth")  # after 4 steps: grown once, one step since
    assert (saved["scale"], saved["_growth_tracker"]) == (512.0, 1)

    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 5
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1000)
    resumed = cpu_amp_trainer(cfg, scaler)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert scaler.state_dict() == saved
    # MODEL.WEIGHTS_IGNORE is for MODEL.WEIGHTS: a resumed run loads its head too
    assert resumed.checkpointer.ignore_prefixes == ("sem_seg_head.predictor.class_embed",)
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    torch.testing.assert_close(resumed.model.sem_seg_head.predictor.class_embed.weight,
                               final["sem_seg_head.predictor.class_embed.weight"])
    resumed.train()  # iteration 4 steps with the restored scaler: 2 steps since the growth
    assert (scaler.get_scale(), scaler.state_dict()["_growth_tracker"]) == (512.0, 2)

    # a checkpoint of a run without AMP holds no scaler state: resumed with AMP, the optimizer
    # is restored and the scaler starts afresh (instead of detectron2's KeyError)
    state = torch.load(out / "model_0000001.pth", weights_only=True)["trainer"]
    del state["_trainer"]["grad_scaler"]
    fresh = torch.amp.GradScaler("cpu", init_scale=8.0)
    resumed._trainer.grad_scaler = fresh
    resumed.load_state_dict(state)
    assert fresh.get_scale() == 8.0
    steps = {float(s["step"]) for s in resumed.optimizer.state_dict()["state"].values()}
    assert steps == {2.0}


@pytest.mark.slow
def test_resume_refuses_the_state_of_another_optimizer(tmp_path):
    from hcformer.engine.trainer import Trainer

    out = tmp_path / "out"
    cfg = tiny_shapes_cfg(tmp_path, "opt_shapes", "SOLVER.MAX_ITER", "1", "SOLVER.OPTIMIZER", "ADAMW", num_train=2)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = out / "model_final.pth"
    assert torch.load(final, weights_only=True)["trainer"]["optimizer_type"] == "AdamW"

    cfg.defrost()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.OPTIMIZER = 2, "SGD"
    with pytest.raises(ValueError) as error:
        Trainer(cfg).resume_or_load(resume=True)  # detectron2 would fail later: KeyError 'momentum'
    message = str(error.value)
    assert message.startswith(f"--resume: {final} holds the state of AdamW, but this run's optimizer is SGD")
    assert "SOLVER.OPTIMIZER SGD" in message and f"MODEL.WEIGHTS {final}" in message

    # a checkpoint saved before the optimizer's name was recorded: told apart by its hyperparameters
    state = torch.load(final, weights_only=True)
    del state["trainer"]["optimizer_type"]
    torch.save(state, final)
    with pytest.raises(ValueError, match=r"holds the state of another kind of optimizer \(with .*betas.*; "
                                         r"without .*momentum.*\), but this run's optimizer is SGD"):
        Trainer(cfg).resume_or_load(resume=True)

    cfg.SOLVER.OPTIMIZER = "ADAMW"  # the run's own optimizer resumes
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 1 and resumed.optimizer.state_dict()["state"]

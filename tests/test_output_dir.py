"""One output directory, one owner: a training owns OUTPUT_DIR, a second training there is
refused, ``--eval-only`` writes and removes nothing of a training running in it, SIGTERM /
SIGINT stop a training cleanly, a full disk is one message, files follow the umask.

The end-to-end tests run train_net.py in subprocesses on tiny generated shapes; the "training
caught in the middle of a save" is tests/pausing_train_net.py, which stops itself (SIGSTOP)
with its temporary checkpoint file written and not yet renamed.
"""
import errno
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest
import torch
from detectron2.config import get_cfg

from hcformer.checkpoint.atomic_files import HOST
from hcformer.engine import output_dir
from hcformer.engine.interruption import TrainingInterrupted, stop_on_signals
from hcformer.engine.output_dir import LOCK_FILE, OutputDirInUseError, OutputDirLock, take_output_dir
from tiny_configs import ROOT, SHAPES_CONFIG, TINY_SHAPES_OVERRIDES

# four iterations of batch 1; checkpoints after iterations 1 and 3 (and model_final after 3),
# a third of the size with the ResNet frozen (no optimizer state for it)
TINY = TINY_SHAPES_OVERRIDES + [
    "SOLVER.WARMUP_ITERS", "2", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "1",
    "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "0", "MODEL.BACKBONE.FREEZE_AT", "5",
]


def subprocess_env(tmp_path: Path) -> dict:
    return dict(
        os.environ,
        DETECTRON2_DATASETS=str(tmp_path / "datasets"),
        HCFORMER_SHAPES_SIZE="64",
        HCFORMER_SHAPES_TRAIN="4",
        HCFORMER_SHAPES_VAL="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CUDA_VISIBLE_DEVICES="",  # gloo CPU processes also where GPUs are (the launcher would pick NCCL)
    )


def train_net(out: Path, *options: str, overrides=(), script: str = "train_net.py") -> List[str]:
    """The command line of a tiny training (or, with --eval-only, evaluation) writing to ``out``."""
    return [sys.executable, str(ROOT / script), "--config-file", str(SHAPES_CONFIG), *options, *TINY,
            *overrides, "OUTPUT_DIR", str(out)]


def pausing_train_net(out: Path, iteration: int) -> List[str]:
    return train_net(out, "--pause-at-iteration", str(iteration), script="tests/pausing_train_net.py")


def start(command: List[str], env: dict, log: Path, **kwargs) -> subprocess.Popen:
    """``command`` in the background, its output to ``log`` (a pipe nobody reads would fill up
    and block it)."""
    with open(log, "w") as f:
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT, **kwargs)


def wait_until_stopped(process: subprocess.Popen) -> None:
    """Wait until ``process`` has stopped itself (pausing_train_net.py) or ended."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the training ended (status {status}) instead of pausing in its save"


def temporary_files(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def snapshot(directory: Path) -> dict:
    """The files directly in ``directory`` and their contents."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def acquire_in_another_process(directory: Path) -> str:
    """What ``OutputDirLock.acquire`` does in another process (a forked child, which does nothing
    else): "acquired" or the refusal's message. POSIX locks never conflict within one process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no torch, only the lock
        try:
            lock = OutputDirLock(str(directory), "training")
            try:
                lock.acquire()
                outcome = "acquired"
                lock.release()
            except OutputDirInUseError as error:
                outcome = str(error)
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        outcome = f.read().decode()
    os.waitpid(pid, 0)
    return outcome


# ------------------------------------------------------------------------------- the lock
def test_a_second_owner_is_refused_with_the_first_one_named(tmp_path):
    out = tmp_path / "out"
    lock = OutputDirLock(str(out), "training")
    assert lock.acquire() is None  # makes the directory; no previous owner
    try:
        message = acquire_in_another_process(out)
        owner = f"pid {os.getpid()} on this machine ({HOST}), started "
        assert message.startswith(f"{out} is in use by another training: {owner}")
        assert f"(lock file {out / LOCK_FILE})" in message and "give this run another OUTPUT_DIR" in message
        assert "\n" not in message
    finally:
        lock.release()
    assert not (out / LOCK_FILE).exists()  # released on exit: the file goes
    assert acquire_in_another_process(out) == "acquired"


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    left = {"pid": dead.pid, "host": HOST, "started": "2026-01-01T00:00:00+00:00", "role": "training",
            "command": "train_net.py --config-file a.yaml"}
    (out / LOCK_FILE).write_text(json.dumps(left))  # SIGKILL: the file stays, the lock does not
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(out)
    try:
        (line,) = take_output_dir(cfg, eval_only=False, resume=False)
        assert line == (f"{out / LOCK_FILE} was left by a run that ended without releasing it (pid {dead.pid} "
                        f"on this machine ({HOST}), started 2026-01-01T00:00:00+00:00: train_net.py --config-file "
                        "a.yaml); taken over.")
        assert take_output_dir(cfg, eval_only=False, resume=False) == []  # this process owns it already
        assert acquire_in_another_process(out).startswith(f"{out} is in use by another training: pid {os.getpid()}")
    finally:
        output_dir._release_all()
    # a file left by a run on another machine: taken over too (its lock would be held if it ran,
    # unless the file system does not share locks, which the line says)
    (out / LOCK_FILE).write_text(json.dumps({**left, "host": "elsewhere"}))
    try:
        (line,) = take_output_dir(cfg, eval_only=False, resume=False)
        assert "on host elsewhere" in line and "does not share locks between machines" in line
    finally:
        output_dir._release_all()


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(output_dir.fcntl, "lockf", no_locks)
    with pytest.raises(OSError) as error:
        OutputDirLock(str(tmp_path), "training").acquire()
    assert error.value.errno == errno.ENOLCK
    assert error.value.strerror.startswith(f"cannot lock {tmp_path / LOCK_FILE} (No locks available): the file "
                                           f"system of {tmp_path} offers no locks")


def test_eval_only_gets_a_directory_of_its_own(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000003.pth").write_bytes(b"weights")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    cfg = get_cfg()
    cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS = str(out), "/elsewhere/R-50.pkl"
    try:
        lines = take_output_dir(cfg, eval_only=True, resume=False)
        assert (cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS) == (str(out / "eval_R-50"), "/elsewhere/R-50.pkl")
        assert lines == [f"--eval-only: config.yaml, log.txt and evaluation results go to {out / 'eval_R-50'}; "
                         f"the training files of {out} are left alone"]
        # --resume: the checkpoint last_checkpoint names now, read once
        cfg.OUTPUT_DIR = str(out)
        lines = take_output_dir(cfg, eval_only=True, resume=True)
        assert (cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS) == (str(out / "eval_model_0000003"), str(out / "model_0000003.pth"))
        assert lines[0] == f"--eval-only --resume: evaluating {out / 'model_0000003.pth'}, the last checkpoint of {out}"
        assert (out / "eval_model_0000003" / LOCK_FILE).is_file()  # owned, so two evaluations cannot mix
        assert not (out / LOCK_FILE).exists()  # the training's directory is not taken
    finally:
        output_dir._release_all()
    cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS = str(out), ""
    (out / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(FileNotFoundError, match="last_checkpoint names model_0000009.pth, which does not exist"):
        take_output_dir(cfg, eval_only=True, resume=True)
    assert take_output_dir(cfg, eval_only=True, resume=False) and cfg.OUTPUT_DIR == str(out / "eval_random_init")
    output_dir._release_all()


# ------------------------------------------------------------------- runs in one directory
@pytest.mark.slow
def test_eval_only_and_a_second_training_leave_a_running_training_alone(tmp_path):
    """Both used to break the first training: --eval-only deleted its temporary checkpoint
    (the training then died renaming it) and overwrote its config.yaml; a second training
    mixed its checkpoints, log and config with the first's, and both exited 0."""
    env = subprocess_env(tmp_path)
    out, reference = tmp_path / "out", tmp_path / "reference"
    trainer = start(pausing_train_net(out, iteration=3), env, tmp_path / "trainer.txt")
    undisturbed = None
    try:
        wait_until_stopped(trainer)  # in the save of model_0000003, its temporary file written
        (temporary,) = temporary_files(out)
        assert temporary.startswith(f".model_0000003.pth.{trainer.pid}@")
        before = snapshot(out)
        # the same run, never disturbed, meanwhile (the dataset is generated by now)
        undisturbed = start(train_net(reference), env, tmp_path / "undisturbed.txt", umask=0o022)

        # --eval-only of the last checkpoint, with the training's config and OUTPUT_DIR
        evaluation = subprocess.run(train_net(out, "--eval-only", "--resume"), env=env, capture_output=True,
                                    text=True, timeout=300)
        assert evaluation.returncode == 0, evaluation.stderr[-3000:]
        log = (out / "eval_model_0000001" / "log.txt").read_text()
        assert f"evaluating {out / 'model_0000001.pth'}, the last checkpoint of {out}" in log
        assert f"Loading from {out / 'model_0000001.pth'}" in log  # detectron2's checkpointer
        assert "OUTPUT_DIR: " + str(out / "eval_model_0000001") in (out / "eval_model_0000001/config.yaml").read_text()
        assert snapshot(out) == before  # no file of the training written or removed

        # a second training, of two processes, with another learning rate and length
        second = subprocess.run(
            train_net(out, "--num-gpus", "2", "--dist-url", "auto",
                      overrides=["SOLVER.BASE_LR", "0.001", "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2"]),
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert second.returncode != 0
        refusal = f"OutputDirInUseError: {out} is in use by another training: pid {trainer.pid} on this machine"
        # whichever rank torch's launcher reports (it stops the other): rank 1 followed rank 0
        assert refusal in second.stderr, second.stderr[-3000:]
        assert snapshot(out) == before  # not even a log line

        os.kill(trainer.pid, signal.SIGCONT)
        assert trainer.wait(timeout=300) == 0, (tmp_path / "trainer.txt").read_text()[-3000:]
        assert undisturbed.wait(timeout=300) == 0, (tmp_path / "undisturbed.txt").read_text()[-3000:]
    finally:
        for process in (trainer, undisturbed):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    final = torch.load(out / "model_final.pth", weights_only=True)
    expected = torch.load(reference / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3 and (out / "last_checkpoint").read_text() == "model_final.pth"
    assert final["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert not (out / LOCK_FILE).exists() and not temporary_files(out)
    # every file of the undisturbed run was created per its umask (022): checkpoints too
    for path in reference.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_training_with_a_log_line_and_no_temporary_file(tmp_path, signum):
    out = tmp_path / "out"
    process = start(pausing_train_net(out, iteration=3), subprocess_env(tmp_path), tmp_path / "output.txt")
    try:
        wait_until_stopped(process)  # the signal arrives in the middle of a save
        assert temporary_files(out)
        os.kill(process.pid, signum)
        os.kill(process.pid, signal.SIGCONT)
        assert process.wait(timeout=120) == 128 + signum, (tmp_path / "output.txt").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    name = signal.Signals(signum).name
    assert (f"{name} received at iteration 3: training stopped. Last complete checkpoint: "
            f"{out / 'model_0000001.pth'}; --resume continues from it.") in (out / "log.txt").read_text()
    assert not temporary_files(out) and not (out / LOCK_FILE).exists()
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"


@pytest.mark.slow
def test_a_sigterm_to_the_process_group_stops_training_and_its_data_loader_workers_quietly(tmp_path):
    # what a scheduler does (SLURM's scancel): every process of the job gets the SIGTERM, the
    # DataLoader workers as well; PyTorch reported their deaths as a RuntimeError traceback
    out = tmp_path / "out"
    command = train_net(out, overrides=["SOLVER.MAX_ITER", "1000", "DATALOADER.NUM_WORKERS", "2"])
    output = tmp_path / "output.txt"
    process = start(command, subprocess_env(tmp_path), output, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "Starting training from iteration" not in output.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, output.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # a few iterations, with the workers loading
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM, output.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.read_text()
    assert "SIGTERM received at iteration" in text
    assert "Traceback" not in text, text[text.index("Traceback"):][:3000]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_a_training_stopped_in_its_last_iteration_is_not_evaluated(tmp_path):
    # detectron2's EvalHook evaluates after training when iter + 1 >= max_iter, also after an
    # exception or a signal in the last iteration: a half-stepped model, and an evaluation
    # that a SIGTERM would have to wait for
    from hcformer.engine.trainer import Trainer
    from test_training_recovery import tiny_shapes_cfg

    cfg = tiny_shapes_cfg(tmp_path, "stopped_shapes", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
                          "DATASETS.TEST", "('stopped_shapes_val_panoptic_with_sem_seg',)", "TEST.EVAL_PERIOD", "0",
                          num_train=2)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    forward = trainer.model.forward
    signalled = []

    def signalled_in_the_last_iteration(*args, **kwargs):
        if trainer.iter == 1 and not signalled:  # once: a second SIGUSR1 would end the process
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)  # raises here, through stop_on_signals
        return forward(*args, **kwargs)

    trainer.model.forward = signalled_in_the_last_iteration
    with stop_on_signals((signal.SIGUSR1,)), pytest.raises(TrainingInterrupted):
        trainer.train()
    assert trainer.iter == 1 and not hasattr(trainer, "_last_eval_results")  # not evaluated
    assert not list((tmp_path / "out").glob("*.pth"))  # and nothing of that state saved
    assert (tmp_path / "out" / "metrics.json").is_file()  # the writers were closed as usual


def _wait_forever(started) -> None:
    started.set()
    threading.Event().wait()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_a_process_forked_in_the_block_ends_on_sigterm():
    # multiprocessing.Pool.terminate (panopticapi's PQ workers) sends SIGTERM and then waits: a
    # worker with the block's handler raised TrainingInterrupted (exit code 1), or, when the
    # signal came just before it blocked on the queue's lock, never ran it and waited forever
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    with stop_on_signals((signal.SIGTERM,)):
        worker = fork.Process(target=_wait_forever, args=(started,))
        worker.start()
        try:
            assert started.wait(timeout=30)
            worker.terminate()
            worker.join(timeout=30)
        finally:
            if worker.exitcode is None:
                worker.kill()
                worker.join()
    assert worker.exitcode == -signal.SIGTERM


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_a_child_signalled_before_its_fork_hooks_ran_acts_as_before_the_block():
    with stop_on_signals((signal.SIGUSR1,)):
        handler_of_the_block = signal.getsignal(signal.SIGUSR1)
        child = os.fork()
        if child == 0:
            try:  # the fork hooks have run; as if this signal had come before them
                signal.signal(signal.SIGUSR1, handler_of_the_block)
                os.kill(os.getpid(), signal.SIGUSR1)
            finally:
                os._exit(3)  # only if the signal did not end the child (its default action)
        _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1


def _can_mount_a_tmpfs(directory: Path) -> str:
    """'' if this process may mount a tmpfs in a mount namespace of its own, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    directory.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs '{directory}'"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"cannot mount a tmpfs here: {probe.stderr.strip()}"


@pytest.mark.slow
def test_a_full_disk_is_one_message_naming_the_last_complete_checkpoint(tmp_path):
    out = tmp_path / "out"
    reason = _can_mount_a_tmpfs(out)
    if reason:
        pytest.skip(reason)
    # In a mount namespace of its own: a tmpfs as OUTPUT_DIR, a first run that saves
    # model_final.pth (iteration 1), then the tmpfs shrunk to leave half a checkpoint free and a
    # --resume whose next save (model_0000003) fills it. The tmpfs vanishes with the namespace,
    # so the script lists what is left in it.
    first = train_net(out, overrides=["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100"])
    resumed = train_net(out, "--resume")
    script = f"""
set -e
mount -t tmpfs -o size=1g tmpfs '{out}'
{shlex.join(first)} > /dev/null 2>&1
size=$(stat -c %s '{out}/model_final.pth')
used=$(df --output=used -B1 '{out}' | tail -n 1)
mount -o remount,size=$((used + size / 2)) tmpfs '{out}'
set +e
{shlex.join(resumed)} > /dev/null 2> '{tmp_path}/stderr.txt'
echo "exit status $?"
ls -A '{out}'
echo "last_checkpoint: $(cat '{out}/last_checkpoint')"
"""
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)
    report = result.stdout.splitlines()
    assert report and report[0] == "exit status 1", (result.stdout, result.stderr[-3000:])
    stderr = (tmp_path / "stderr.txt").read_text()
    # one error, not torch's three chained tracebacks
    assert "unexpected pos" not in stderr and "During handling of the above exception" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"hcformer.checkpoint.checkpointer.CheckpointWriteError: Could not write "
                            f"{out / 'model_0000003.pth'}: No space left on device ({out}: ")
    assert " MiB free, about " in error and f"last complete checkpoint: {out / 'model_final.pth'}. " in error
    assert error.endswith("run again with --resume to continue from it.")
    # nothing lost, nothing left: the tag still names the complete checkpoint, no temporary file
    assert sorted(report[1:-1]) == ["config.yaml", "last_checkpoint", "log.txt", "metrics.json", "model_final.pth"]
    assert report[-1] == "last_checkpoint: model_final.pth"

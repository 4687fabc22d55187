"""Checkpoints: no code run on load, clear errors for bad files and wrong architectures, and a
crash, a signal or a full disk while saving that loses nothing; files per the umask."""
import errno
import os
import pickle
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from hcformer.checkpoint import (
    ALLOW_PICKLE_ENV,
    CheckpointFileError,
    CheckpointMismatchError,
    CheckpointWriteError,
    HCFormerCheckpointer,
    PickleNotAllowedError,
    last_complete_checkpoint,
)
from hcformer.checkpoint.atomic_files import HOST
from hcformer.engine.interruption import TrainingInterrupted, stop_on_signals


def small_model(width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: proof that a file executed code on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(autouse=True)
def no_pickle_env(monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)


def test_pkl_is_refused_unless_allowed(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "test"}, f)

    with pytest.raises(PickleNotAllowedError, match="convert-torchvision-to-d2.py") as error:
        HCFormerCheckpointer(small_model()).load(str(path))
    assert "MODEL.ALLOW_PICKLE" in str(error.value) and str(path) in str(error.value)

    other = small_model(4)
    nn.init.zeros_(other[0].weight)
    HCFormerCheckpointer(other, allow_pickle=True).load(str(path))
    torch.testing.assert_close(other[0].weight, model[0].weight)

    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")  # the environment variable allows it too
    HCFormerCheckpointer(small_model()).load(str(path))


def test_pth_with_code_is_refused_and_the_code_never_runs(tmp_path):
    witness = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": small_model().state_dict(), "extra": _RunsCode(witness)}, path)
    with pytest.raises(PickleNotAllowedError, match="weights_only"):
        HCFormerCheckpointer(small_model()).load(str(path))
    assert not witness.exists()


def test_backbone_weights_pkl_is_gated_too(tmp_path):
    from hcformer.modeling.backbone.resnet import load_imagenet_weights

    path = tmp_path / "r18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": 0}, f)
    with pytest.raises(PickleNotAllowedError, match="MODEL.ALLOW_PICKLE"):
        load_imagenet_weights(nn.Module(), str(path))


def test_truncated_and_foreign_files_are_named(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": small_model().state_dict()}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pth"
    text.write_text("<html>404 Not Found</html>")
    not_a_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_dict)
    for path, reason in ((truncated, "truncated"), (text, "not a PyTorch checkpoint"), (not_a_dict, "not a checkpoint")):
        with pytest.raises(CheckpointFileError, match=reason) as error:
            HCFormerCheckpointer(small_model()).load(str(path))
        assert str(path) in str(error.value)


def test_wrong_architecture_lists_every_mismatch_in_one_message(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": small_model(width=8).state_dict()}, path)
    model = small_model(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as error:
        HCFormerCheckpointer(model).load(str(path))
    message = str(error.value)
    for line in (
        "0.weight: checkpoint (8, 3), model (4, 3)",
        "0.bias: checkpoint (8,), model (4,)",
        "2.weight: checkpoint (2, 8), model (2, 4)",
    ):
        assert line in message
    for key, value in model.state_dict().items():  # refused before anything was loaded
        assert torch.equal(value, before[key]), key

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"encoder.w": torch.zeros(2)}}, unrelated)
    with pytest.raises(CheckpointMismatchError, match="0 tensors match") as error:
        HCFormerCheckpointer(small_model()).load(str(unrelated))
    assert "encoder.w" in str(error.value) and "0.weight" in str(error.value)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    checkpointer = HCFormerCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # half-written...
        raise OSError("disk full")  # ...and the process dies

    with torch.no_grad():
        model[0].weight.add_(1.0)
    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000002", iteration=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    fresh = small_model(4)
    extra = HCFormerCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_crash_while_tagging_keeps_the_previous_tag(tmp_path, monkeypatch):
    checkpointer = HCFormerCheckpointer(small_model(), str(tmp_path))
    checkpointer.save("model_0000001")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        checkpointer.tag_last_checkpoint("model_0000002.pth")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]


def test_resume_removes_only_the_temporary_files_of_dead_writers(tmp_path):
    checkpointer = HCFormerCheckpointer(small_model(), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    killed = f".model_0000002.pth.{dead.pid}@{HOST}.tmp"  # SIGKILL in the middle of a save
    kept = [
        f".model_0000002.pth.{os.getpid()}@{HOST}.tmp",  # a training saving right now: this process runs
        f".model_0000002.pth.{dead.pid}@another-host.tmp",  # its processes cannot be checked from here
        ".model_0000002.x1y2z3.tmp",  # an older version's name, which does not say who wrote it
        "notes.tmp",  # not ours
    ]
    for name in [killed, *kept]:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    # a process that does not save (--eval-only) removes nothing, not even a dead writer's file
    HCFormerCheckpointer(small_model(), str(tmp_path), save_to_disk=False).resume_or_load("", resume=True)
    assert (tmp_path / killed).exists()

    extra = HCFormerCheckpointer(small_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last_checkpoint", "model_0000001.pth", *kept])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_are_created_per_the_umask(tmp_path, umask):
    # they used to be 0600 whatever the umask (tempfile.mkstemp), unlike config.yaml and log.txt
    previous = os.umask(umask)
    try:
        HCFormerCheckpointer(small_model(), str(tmp_path)).save("model_0000001")
    finally:
        os.umask(previous)
    for name in ("model_0000001.pth", "last_checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_full_disk_is_one_error_naming_the_last_complete_checkpoint(tmp_path, monkeypatch):
    checkpointer = HCFormerCheckpointer(small_model(), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 100)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:  # what torch's zip writer makes of it
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 100 vs 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as error:
        checkpointer.save("model_0000002", iteration=2, buffer=torch.zeros(2**20))  # 4 MiB
    message = str(error.value)
    assert re.fullmatch(
        re.escape(f"Could not write {tmp_path / 'model_0000002.pth'}: No space left on device ({tmp_path}: ")
        + r"\d+\.\d MiB free, about 4\.0 MiB needed\). "
        + re.escape(f"Nothing already written was changed; last complete checkpoint: {tmp_path / 'model_0000001.pth'}. "
                    "Free some space (or set another OUTPUT_DIR) and run again with --resume to continue from it."),
        message,
    ), message
    assert error.value.__suppress_context__  # one traceback, not three chained ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000001.pth")


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread")
def test_a_signal_during_a_save_removes_its_temporary_file(tmp_path, monkeypatch):
    checkpointer = HCFormerCheckpointer(small_model(), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    real_save = torch.save
    temporary = []

    def signalled_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        temporary.extend(p.name for p in tmp_path.glob(".*.tmp"))
        os.kill(os.getpid(), signal.SIGUSR1)  # its handler raises right here

    monkeypatch.setattr(torch, "save", signalled_midway)
    with stop_on_signals((signal.SIGUSR1,)), pytest.raises(TrainingInterrupted) as stop:
        checkpointer.save("model_0000002", iteration=2)
    assert temporary == [f".model_0000002.pth.{os.getpid()}@{HOST}.tmp"]
    assert (stop.value.signal_name, stop.value.exit_code) == ("SIGUSR1", 128 + signal.SIGUSR1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread")
def test_a_signal_inside_torch_save_is_raised_as_itself(tmp_path, monkeypatch):
    # raised in the middle of torch's zip writer, the signal's exception was replaced by the
    # writer's RuntimeError ("unexpected pos"): a traceback and exit status 1 instead of 143
    checkpointer = HCFormerCheckpointer(small_model(), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    real_save = torch.save

    class SignalledAtTheThirdWrite:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGUSR1)  # its handler raises right here
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f, *args, **kwargs: real_save(obj, SignalledAtTheThirdWrite(f)))
    with stop_on_signals((signal.SIGUSR1,)), pytest.raises(TrainingInterrupted) as stop:
        checkpointer.save("model_0000002", iteration=2)
    assert isinstance(stop.value.__context__, RuntimeError)  # torch's, suppressed from the traceback
    assert stop.value.__suppress_context__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]


def test_weights_that_name_a_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(IsADirectoryError) as error:
        HCFormerCheckpointer(small_model()).load(str(run))
    assert str(error.value) == f"MODEL.WEIGHTS {run} is a directory, not a checkpoint file; name a .pth or .pkl file"
    torch.save({"model": small_model().state_dict()}, run / "model_final.pth")
    with pytest.raises(IsADirectoryError) as error:
        HCFormerCheckpointer(small_model()).load(str(run))
    assert str(error.value).endswith(f"name one of the checkpoints in it: {run / 'model_final.pth'}")


@pytest.mark.parametrize("tag", ["model_0000099.pth", "", "\n"])
def test_resume_names_a_last_checkpoint_that_names_no_file(tmp_path, tag):
    out = tmp_path / "out"
    out.mkdir()
    checkpointer = HCFormerCheckpointer(small_model(), str(out))
    checkpointer.save("model_0000003")
    (out / "last_checkpoint").write_text(tag)
    torch.save({"model": small_model().state_dict()}, tmp_path / "weights.pth")

    with pytest.raises(FileNotFoundError) as error:
        checkpointer.resume_or_load(str(tmp_path / "weights.pth"), resume=True)
    message = str(error.value)
    assert message.startswith(f"--resume: {out / 'last_checkpoint'} ")
    what = "names model_0000099.pth, which does not exist" if tag.strip() else "is empty"
    assert what in message
    assert f"{out} holds model_0000003.pth." in message  # what it could name instead
    assert "delete it to start from MODEL.WEIGHTS" in message and "without --resume" in message
    assert "MODEL.WEIGHTS: no such file" not in message

    # without --resume, last_checkpoint is not read: MODEL.WEIGHTS loads as usual
    checkpointer.resume_or_load(str(tmp_path / "weights.pth"), resume=False)

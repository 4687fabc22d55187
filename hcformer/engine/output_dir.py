"""One output directory, one owner.

A training owns its OUTPUT_DIR for as long as it runs: checkpoints, ``last_checkpoint``,
``config.yaml``, ``log.txt`` and ``metrics.json`` there are its own. A second training started
on the same directory (another terminal, a scheduler retrying a job that still runs) would
overwrite them and interleave its log with the first one's, and both would report success; it
is refused instead, with a message naming the owner.

``--eval-only`` writes no file of the training: it evaluates in a directory of its own,
``OUTPUT_DIR/eval_<checkpoint name>/`` (its ``config.yaml``, ``log.txt`` and the evaluators'
``inference/`` files), which it owns the same way, so that an intermediate checkpoint can be
evaluated while the training goes on.

Ownership is a POSIX record lock (``fcntl.lockf``) on ``<directory>/owner.lock``, which holds
the owner's pid, host, start time and command line for the messages. The kernel (or the NFS
server) drops the lock when its process ends, however it ends, so a lock file left by a killed
run is stale by construction and the next run takes it over; a clean exit removes the file.
Record locks belong to the process: data-loader workers forked from it do not inherit them, so
a killed training's directory is free at once even while its workers are still exiting.

With several processes (``--num-gpus N``, several machines) only rank 0 takes the lock and the
other ranks follow its outcome.
"""
import atexit
import contextlib
import errno
import fcntl
import json
import os
import sys
from datetime import datetime
from typing import Dict, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.utils import comm

from hcformer.checkpoint import read_last_checkpoint
from hcformer.checkpoint.atomic_files import HOST

__all__ = ["LOCK_FILE", "OutputDirInUseError", "OutputDirLock", "evaluation_dir", "take_output_dir"]

LOCK_FILE = "owner.lock"


class OutputDirInUseError(RuntimeError):
    """Another process owns the output directory."""


# characters of the owner's command line in messages (the lock file holds all of it)
_COMMAND_CHARS = 160


def _describe_owner(owner: Dict) -> str:
    host = owner.get("host", "?")
    command = str(owner.get("command", "?"))
    if len(command) > _COMMAND_CHARS:
        command = command[:_COMMAND_CHARS] + " ..."
    return (
        f"pid {owner.get('pid', '?')} on {'this machine' if host == HOST else 'host ' + host} ({host}), "
        f"started {owner.get('started', '?')}: {command}"
    )


class OutputDirLock:
    """Exclusive ownership of ``directory`` by this process (see the module docstring).

    Args:
        directory: made if missing.
        role: what the owner does there ("training", "evaluation"), for the messages.
    """

    def __init__(self, directory: str, role: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self.role = role
        self._fd: Optional[int] = None

    def acquire(self) -> Optional[Dict]:
        """Take the lock, or raise ``OutputDirInUseError`` naming its owner.

        Returns:
            the owner recorded in a lock file that a run left behind without releasing it
            (it was killed), or None.
        """
        os.makedirs(self.directory, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EACCES, errno.EAGAIN):
                    raise OutputDirInUseError(self._in_use_message()) from None
                raise OSError(
                    error.errno,
                    f"cannot lock {self.path} ({error.strerror}): the file system of {self.directory} "
                    "offers no locks, so two runs there could not be kept apart; choose an output "
                    "directory on one that does (a local disk, NFS with its lock service)",
                ) from None
            # the owner we waited for may have removed the file (release) between our open and
            # our lock: then we hold the lock of a deleted file, and must lock the new one
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            os.close(fd)
        previous = _parse_owner(os.read(fd, 1 << 16))
        owner = {
            "pid": os.getpid(),
            "host": HOST,
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "role": self.role,
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner, indent=1).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd
        return previous

    def release(self) -> None:
        """Give the directory up: remove the lock file, then the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(self._fd)  # drops the lock
            self._fd = None

    def _in_use_message(self) -> str:
        # (a process that holds the lock never reads the file: closing any descriptor of it
        # would drop this process's record lock)
        owner = None
        with contextlib.suppress(OSError):
            with open(self.path, "rb") as f:
                owner = _parse_owner(f.read())
        who = (
            f"another {owner.get('role', 'run')}: {_describe_owner(owner)}"
            if owner
            else "another process that has not written its name yet"
        )
        return (
            f"{self.directory} is in use by {who} (lock file {self.path}). Two runs writing one "
            "directory would overwrite each other's checkpoints, config.yaml and log.txt: give this "
            "run another OUTPUT_DIR, or wait until that one has ended (--resume then continues a "
            "training)."
        )


def _parse_owner(content: bytes) -> Optional[Dict]:
    with contextlib.suppress(ValueError):
        owner = json.loads(content.decode(errors="replace"))
        if isinstance(owner, dict):
            return owner
    return None


# the directories this process owns, released when it exits (the kernel would drop the locks
# anyway; this removes the files)
_OWNED: Dict[str, OutputDirLock] = {}


@atexit.register
def _release_all() -> None:
    for lock in _OWNED.values():
        lock.release()
    _OWNED.clear()


def _own(directory: str, role: str) -> List[str]:
    """Own ``directory`` for the rest of this process (again, or no directory: a no-op); lines
    to log."""
    key = os.path.realpath(directory)
    if not directory or key in _OWNED:
        return []
    lock = OutputDirLock(directory, role)
    previous = lock.acquire()
    _OWNED[key] = lock
    if previous is None:
        return []
    line = f"{lock.path} was left by a run that ended without releasing it ({_describe_owner(previous)}); taken over."
    if previous.get("host") != HOST:
        line += (
            " That run was on another machine: if it is still running, this file system does not "
            "share locks between machines (an NFS 'nolock' mount?) and both runs write here: stop one."
        )
    return [line]


def evaluation_dir(output_dir: str, weights: str) -> str:
    """Where ``--eval-only`` of ``weights`` writes: ``<OUTPUT_DIR>/eval_<file name without
    extension>``, ``eval_random_init`` without weights."""
    name = os.path.splitext(os.path.basename(weights))[0] if weights else "random_init"
    return os.path.join(output_dir, f"eval_{name}")


def _evaluation_plan(cfg: CfgNode, resume: bool) -> Tuple[str, str, List[str]]:
    """(MODEL.WEIGHTS, OUTPUT_DIR, lines to log) of an ``--eval-only`` run of ``cfg``. With
    ``--resume``, the checkpoint that ``last_checkpoint`` names now: read once, so that a
    training saving meanwhile cannot make the run evaluate one checkpoint and name another."""
    weights, lines = cfg.MODEL.WEIGHTS, []
    last = read_last_checkpoint(cfg.OUTPUT_DIR) if resume and os.path.isdir(cfg.OUTPUT_DIR) else None
    if last is not None:
        weights = last
        lines.append(f"--eval-only --resume: evaluating {last}, the last checkpoint of {cfg.OUTPUT_DIR}")
    if not cfg.OUTPUT_DIR:  # no output directory: nothing is written
        return weights, "", lines
    directory = evaluation_dir(cfg.OUTPUT_DIR, weights)
    lines.append(
        f"--eval-only: config.yaml, log.txt and evaluation results go to {directory}; the training "
        f"files of {cfg.OUTPUT_DIR} are left alone"
    )
    return weights, directory, lines


def take_output_dir(cfg: CfgNode, eval_only: bool, resume: bool) -> List[str]:
    """Make this run the owner of its output directory before it writes anything there.

    A training owns OUTPUT_DIR. ``--eval-only`` gets a directory of its own
    (``evaluation_dir``): OUTPUT_DIR and MODEL.WEIGHTS (with ``--resume``, the last checkpoint)
    are set in ``cfg``, which must not be frozen yet, and it owns that directory.

    Rank 0 decides and takes the lock; with several processes the others follow its decision
    (they take part in one all-gather), and raise the same error if it failed.

    Returns:
        lines to log once the loggers are set up.

    Raises:
        OutputDirInUseError: another run owns the directory.
    """
    decision = None  # rank 0's: ("ok", (weights, directory, lines)) or ("error", (type name, message))
    error: Optional[Exception] = None
    if comm.is_main_process():
        try:
            if eval_only:
                weights, directory, lines = _evaluation_plan(cfg, resume)
            else:
                weights, directory, lines = cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, []
            lines += _own(directory, "evaluation" if eval_only else "training")
            decision = ("ok", (weights, directory, lines))
        except Exception as e:  # the other ranks must learn it, not wait for rank 0 forever
            error, decision = e, ("error", (type(e).__name__, str(e)))
    if comm.get_world_size() > 1:
        decision = comm.all_gather(decision)[0]
    if error is not None:
        raise error
    outcome, value = decision
    if outcome == "error":  # this is another rank: fail as rank 0 did
        name, message = value
        if name == OutputDirInUseError.__name__:
            raise OutputDirInUseError(message)
        raise RuntimeError(f"rank 0 could not take its output directory: {name}: {message}")
    weights, directory, lines = value
    cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR = weights, directory
    return lines if comm.is_main_process() else []

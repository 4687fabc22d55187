"""Files that are complete or absent, and temporary files that say who wrote them.

``write_atomically`` writes to a temporary file next to the target and renames it over the
target, so a crash, a signal or a full disk leaves the previous file intact. The temporary
file is named after its writer, ``.<target name>.<pid>@<host>.tmp``, so that a later process
can tell an abandoned one (its writer, on this host, is no longer running) from one that a
live process is writing right now (a training saving while ``--eval-only`` starts in the same
directory) and remove only the former: ``remove_abandoned_temporary_files``.

Files are created with mode 0o666 minus the process umask, as ``open()`` creates them (and
detectron2 its checkpoints), so that a checkpoint can be read by whoever may read the other
files of its directory (``tempfile.mkstemp`` would make it 0600 whatever the umask).
"""
import contextlib
import os
import re
import socket
from typing import BinaryIO, Callable, List, Optional, Tuple

__all__ = [
    "HOST",
    "remove_abandoned_temporary_files",
    "process_is_running",
    "temporary_path",
    "temporary_file_writer",
    "write_atomically",
]

HOST = socket.gethostname()

# .<target>.<pid>@<host>.tmp; the host is last but for ".tmp" because host names hold dots
_TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[^/@]+)\.tmp$")


def temporary_path(path: str) -> str:
    """The temporary file of this process for ``path``, in the same directory (a rename
    within one file system is atomic)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.getpid()}@{HOST}.tmp")


def temporary_file_writer(name: str) -> Optional[Tuple[int, str]]:
    """(pid, host) of the process that made the temporary file ``name`` (a base name), or None
    if ``name`` is not a temporary file of ``write_atomically``."""
    match = _TEMPORARY_NAME.match(name)
    return (int(match["pid"]), match["host"]) if match else None


def process_is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a zombie counts as running: its
    parent has not collected it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_abandoned_temporary_files(directory: str) -> List[str]:
    """Delete the temporary files in ``directory`` whose writer is provably gone (a process of
    this host that is no longer running); return their base names. Files of another host (its
    processes cannot be checked from here), of a running process, and files of other names are
    kept."""
    removed = []
    for name in sorted(os.listdir(directory)):
        writer = temporary_file_writer(name)
        if writer is None or writer[1] != HOST or process_is_running(writer[0]):
            continue
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be synced."""
    with contextlib.suppress(OSError):
        fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a binary file that becomes ``path`` once complete and on disk.

    Whatever happens before that (an exception, a signal raising in this thread, a full disk),
    ``path`` keeps its previous content and the temporary file is removed; a process killed
    outright (SIGKILL) leaves its temporary file, which ``remove_abandoned_temporary_files`` removes.
    """
    tmp = temporary_path(path)
    try:
        # O_TRUNC: a file of this name is a leftover of a dead process that had our pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(os.path.dirname(path))

"""Build a directory once, atomically, even when several processes ask for it at the same time.

A directory counts as built only when it holds the marker file written as the very last step.
Building happens in a temporary sibling (``.<name>.tmp-XXXX``) that is renamed into place, so a
crash or Ctrl-C never leaves a half-built directory under the final name. Concurrent callers
(pytest-xdist workers, DDP ranks) serialise on a lock file next to the directory.
"""

import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
from typing import Any, Callable, Dict, Iterator

__all__ = ["MARKER_NAME", "read_marker", "is_built", "build_directory_once"]

logger = logging.getLogger(__name__)

MARKER_NAME = "COMPLETE.json"


def read_marker(directory: str) -> Dict[str, Any]:
    """Return the manifest stored in ``directory``'s marker file, or {} when there is none."""
    path = os.path.join(directory, MARKER_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def is_built(directory: str, manifest: Dict[str, Any]) -> bool:
    """True when ``directory`` was completely built with exactly this manifest."""
    return read_marker(directory) == manifest


@contextlib.contextmanager
def _exclusive_lock(lock_path: str) -> Iterator[None]:
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # blocks while another process builds
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def build_directory_once(
    directory: str, build: Callable[[str], None], manifest: Dict[str, Any]
) -> str:
    """Make sure ``directory`` exists and was built by ``build`` with ``manifest``.

    Args:
        directory: final location of the built directory.
        build: called with an empty temporary directory to fill; it must not write elsewhere.
        manifest: JSON-serialisable description of what is built (e.g. generator parameters);
            stored in the marker file and compared on later calls.

    Returns:
        ``directory``.

    Raises:
        RuntimeError: ``directory`` holds a complete build with a different manifest (we never
            delete a finished dataset silently).
    """
    directory = os.path.abspath(directory)
    if is_built(directory, manifest):
        return directory
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)

    with _exclusive_lock(os.path.join(parent, f".{name}.lock")):
        if is_built(directory, manifest):  # another process finished while we waited
            return directory
        found = read_marker(directory)
        if found:
            raise RuntimeError(
                f"{directory} was built with {found}, but {manifest} was requested. "
                "Delete the directory to rebuild it."
            )
        if os.path.exists(directory):
            # No marker: leftovers that never completed (we only rename complete builds here).
            logger.warning(f"Removing incomplete {directory}")
            shutil.rmtree(directory)
        # We hold the lock, so temporary dirs of the same name belong to dead processes.
        for stale in glob.glob(os.path.join(parent, f".{name}.tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)

        # os.mkdir applies the process umask, as for every other output (mkdtemp would make the
        # directory private whatever the umask); the pid and a random part make the name unique
        tmp_dir = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(tmp_dir)
        try:
            build(tmp_dir)
            with open(os.path.join(tmp_dir, MARKER_NAME), "w") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
            try:
                os.replace(tmp_dir, directory)
            except OSError:
                # lost a race (a file system whose locks do nothing): fine if complete
                if not is_built(directory, manifest):
                    raise
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return directory

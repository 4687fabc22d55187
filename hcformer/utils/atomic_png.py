"""Label PNGs written all at once or not at all (the ``datasets/prepare_*.py`` scripts).

A PNG is written to a hidden temporary name next to its final path and renamed into place
(atomic on one file system), so an interrupted run never leaves a truncated PNG under a final
name. A SIGKILL between writing and renaming leaves the temporary file behind; the next run
deletes such files with ``remove_stale_temporary_files``.
"""
import os
import re

import numpy as np
from PIL import Image

# ".<name>.png.tmp-<process id>": the process id tells a killed run's file from a live one's
_TEMPORARY_NAME = re.compile(r"^\..+\.png\.tmp-(?P<pid>\d+)$")


def save_png_atomically(array: np.ndarray, path: str) -> None:
    """Write ``array`` (H, W) or (H, W, 3) uint8 as the PNG ``path``, atomically."""
    directory, name = os.path.split(path)
    tmp_path = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(array).save(tmp_path, format="PNG")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # called before this process writes anything
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def remove_stale_temporary_files(directory: str) -> int:
    """Delete the temporary PNGs of ``save_png_atomically`` in ``directory`` whose process is
    gone (a killed run; ``finally`` cleans up after any other interruption). Files of a run still
    writing here and any other file are kept. Returns how many were deleted."""
    removed = 0
    for name in os.listdir(directory):
        match = _TEMPORARY_NAME.match(name)
        if match is None or _is_running(int(match["pid"])):
            continue
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:  # another rerun got there first
            continue
        removed += 1
    return removed

"""Image files named on a command line: paths, globs and directories (the demo, the tools and the
runner of exported models)."""
import glob
import os
from typing import List, Sequence

__all__ = ["IMAGE_EXTENSIONS", "expand_image_paths"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_image_paths(patterns: Sequence[str]) -> List[str]:
    """The files named by ``patterns``, in order: a file as it is, a glob's matches sorted, a
    directory's images (by extension) sorted.

    Raises:
        FileNotFoundError: naming the first pattern (of the tools' --input) that matches nothing.
    """
    files: List[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            files += sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r}: no such file, and no file matches it as a glob")
        files += matches
    return files

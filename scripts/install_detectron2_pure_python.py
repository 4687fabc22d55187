"""Install detectron2 v0.6 from the registry's sdist (`pb1-detectron2==0.6`) as pure Python.

Nothing is compiled: `detectron2._C` becomes a placeholder module that raises a clear error
naming the compiled op if anything ever asks for one. hcformer never does (DCNv2 comes from
torchvision, COCO evaluation from pycocotools).

v0.6 uses names that numpy 1.24 and Pillow 10 removed (``np.int``, ``np.float``, ``np.bool``,
``np.str``; ``Image.LINEAR``), and Python 3.12 has no numpy older than 1.26 nor Pillow older
than 10.1. The sources are rewritten to what those names always stood for (``int``, ``float``,
``bool``, ``str``; ``Image.BILINEAR``) before installing, as detectron2's main has done since;
with that, one set of releases (scripts/constraints-detectron2-v0.6.txt) serves Python 3.11 and 3.12.

Run with the virtualenv's Python, after torch is installed (the sdist's setup.py imports it).
"""
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

SDIST = "pb1-detectron2==0.6"

PLACEHOLDER = '''\
"""Placeholder for detectron2's compiled ops (this detectron2 was installed as pure Python)."""

HCFORMER_PLACEHOLDER = True


# detectron2's environment report (collect_env_info, called by default_setup) asks for these.
def get_compiler_version():
    return "none (pure-Python detectron2)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    raise RuntimeError(
        f"detectron2 compiled op '{name}' is not available: this detectron2 v0.6 was installed "
        "as pure Python by hcformer's scripts/install.sh. hcformer never needs it; if your own "
        "code does, install an official detectron2 build with its C++/CUDA ops."
    )
'''

# Runtime requirements the pure-Python install does not need: tensorboard (optional writer),
# black (only for config pretty-printing), future/pydot (caffe2 export).
DROPPED_REQUIREMENTS = ("tensorboard", "black==21.4b2", "future", "pydot")


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def patch_setup_py(setup_py: Path) -> None:
    text = setup_py.read_text()
    patched = text.replace("ext_modules=get_extensions(),", "ext_modules=[],")
    for req in DROPPED_REQUIREMENTS:
        patched = re.sub(rf'\n\s*"{re.escape(req)}",[^\n]*', "", patched)
    if "ext_modules=[]," not in patched:
        raise RuntimeError(f"{setup_py}: unexpected layout, could not disable the C++ extension")
    setup_py.write_text(patched)


# numpy's removed aliases of builtins (not np.int64, np.float_, np.bool_: a word character follows)
_NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|bool|str|object)\b")


def modernise_sources(package: Path) -> None:
    """Rewrite the removed numpy aliases and ``Image.LINEAR`` in the .py files under ``package``
    (in place; idempotent: a second run finds nothing)."""
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        rewritten = _NUMPY_ALIAS.sub(r"\1", text).replace("Image.LINEAR", "Image.BILINEAR")
        if rewritten != text:
            path.write_text(rewritten)
            print(f"rewrote numpy / Pillow names removed since detectron2 v0.6 in {path}")


def extract_sdist(archive: Path, destination: Path, data_filter: Optional[bool] = None) -> None:
    """Extract a source archive into ``destination``, refusing members that could write elsewhere.

    Python 3.12 and the security releases 3.8.17 / 3.9.17 / 3.10.12 / 3.11.4 have tarfile's
    "data" filter. Older patch releases (still within requires-python) do not: there, only
    plain files and directories that stay inside ``destination`` are accepted, which is all an
    sdist needs (the detectron2 v0.6 one has nothing else). ``data_filter`` None: use the
    filter where this Python has it (tests pass False to exercise the fallback).
    """
    if data_filter is None:
        data_filter = hasattr(tarfile, "data_filter")
    with tarfile.open(archive) as tar:
        if data_filter:
            tar.extractall(destination, filter="data")
            return
        root = destination.resolve()
        members = tar.getmembers()
        for member in members:
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()):
                raise RuntimeError(f"{archive}: {member.name!r} is not a plain file or directory")
            if target != root and root not in target.parents:
                raise RuntimeError(f"{archive}: {member.name!r} would be written outside {root}")
        tar.extractall(destination, members)


def refresh_installed() -> None:
    """Bring an earlier pure-Python install up to date: the placeholder and the rewritten names."""
    import importlib.util

    package = Path(importlib.util.find_spec("detectron2").origin).parent
    target = package / "_C.py"
    if target.read_text() != PLACEHOLDER:
        target.write_text(PLACEHOLDER)
        print(f"updated {target}")
    modernise_sources(package)


def main() -> None:
    if sys.argv[1:] == ["--refresh"]:
        refresh_installed()
        return
    constraints = sys.argv[1:]  # e.g. ["-c", "constraints.txt"]
    with tempfile.TemporaryDirectory(prefix="hcformer-d2-") as tmp:
        tmp = Path(tmp)
        pip("download", "--no-deps", "--no-build-isolation", "-d", str(tmp), SDIST)
        (archive,) = tmp.glob("*.tar.gz")
        extract_sdist(archive, tmp)
        (src,) = [p for p in tmp.iterdir() if p.is_dir()]
        patch_setup_py(src / "setup.py")
        (src / "detectron2" / "_C.py").write_text(PLACEHOLDER)
        modernise_sources(src / "detectron2")
        pip("install", "--no-build-isolation", *constraints, str(src))


if __name__ == "__main__":
    main()

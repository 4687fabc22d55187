"""scripts/install.sh and the pure-Python detectron2 it installs.

Nothing here installs anything: install.sh only ever runs where its stamp says there is nothing
to do, against a temporary VENV whose Python is ``false`` (so any real step fails at once), or
against one whose Python sees stand-in torch packages and can run no pip.
"""
import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional

import pytest
import torch

from tiny_configs import load_script

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts/install.sh"
STAMP = ".hcformer-installed"


def run_install(venv: Path, *arguments: str) -> subprocess.CompletedProcess:
    # as the Makefile runs it: VENV exported, script run with bash
    env = dict(os.environ, VENV=str(venv), PYTHON="false")
    return subprocess.run(
        ["bash", str(INSTALL), *arguments], env=env, capture_output=True, text=True, timeout=60
    )


def dependency_hash() -> str:
    """What install.sh stores in its stamp: sha256 of pyproject.toml, scripts/install*, then
    scripts/constraints* (each glob in bytewise order)."""
    scripts = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.is_file())
    files = [ROOT / "pyproject.toml"]
    for prefix in ("install", "constraints"):
        files += [ROOT / "scripts" / name for name in scripts if name.startswith(prefix)]
    content = b"".join(path.read_bytes() for path in files)
    return hashlib.sha256(content).hexdigest()[:16]


def snapshot(venv: Path) -> dict:
    """{path: mtime} of what an install touches: the stamp, bin/, site-packages' top level."""
    paths = [venv / STAMP, *(venv / "bin").iterdir()]
    for site_packages in venv.glob("lib/python*/site-packages"):
        paths += site_packages.iterdir()
    return {str(p): p.lstat().st_mtime_ns for p in paths}


def test_matching_stamp_is_a_no_op_and_a_stale_one_is_reported(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / STAMP).write_text(dependency_hash() + "\n")

    result = run_install(venv)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"[install 0/5] environment {venv} is up to date\n"
    assert result.stderr == ""
    assert run_install(venv, "--check").returncode == 0
    assert [p.name for p in venv.iterdir()] == [STAMP]  # no virtualenv was even created

    (venv / STAMP).write_text("0123456789abcdef\n")  # installed from other dependency files
    check = run_install(venv, "--check")
    assert check.returncode == 1 and "needs an install" in check.stdout
    assert [p.name for p in venv.iterdir()] == [STAMP]
    result = run_install(venv)  # goes on to install: stops at once, as PYTHON is `false`
    assert result.returncode != 0 and "[install 1/5] virtualenv" in result.stdout
    assert "up to date" not in result.stdout


def test_the_oldest_torch_is_the_same_in_install_sh_and_pyproject():
    minimum = re.search(r'^MIN_TORCH="([\d.]+)"', INSTALL.read_text(), re.M).group(1)
    required = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert minimum == required


@pytest.mark.parametrize("version, refused", [("2.5.1+cu124", True), ("2.6.0", False), ("2.14.1+cu130", False)])
def test_an_older_torch_in_the_environment_is_refused_before_pip_replaces_it(tmp_path, version, refused):
    # a venv whose Python sees stand-in torch / torchvision packages of that version
    packages = tmp_path / "packages"
    for name in ("torch", "torchvision"):
        (packages / name).mkdir(parents=True)
        (packages / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    python = tmp_path / "venv/bin/python"
    python.parent.mkdir(parents=True)
    # -S: no site-packages, so no pip and no detectron2; "-m" (pip) refused outright as well,
    # so that nothing can be installed anywhere
    python.write_text(
        f'#!/bin/sh\n[ "$1" = "-m" ] && exit 1\nPYTHONPATH={packages} exec {sys.executable} -S "$@"\n'
    )
    python.chmod(0o755)
    result = run_install(tmp_path / "venv")
    if refused:
        assert result.returncode == 1
        assert f"torch {version} in {tmp_path / 'venv'} is older than 2.6" in result.stderr
        assert "[install 3/5]" not in result.stdout  # nothing installed after it
    else:  # kept: the install goes on, and stops at its first pip step
        assert f"[install 2/5] keeping torch {version} torchvision {version}" in result.stdout
        assert result.returncode != 0 and "[install 3/5] detectron2" in result.stdout


def test_install_again_on_the_current_env_changes_nothing():
    venv = Path(sys.prefix)  # the environment running these tests
    if not (venv / STAMP).is_file():
        pytest.skip(f"{venv} was not made by scripts/install.sh (no {STAMP})")
    # --check never installs; only where it says "up to date" is the real command run
    if run_install(venv, "--check").returncode != 0:
        pytest.skip(
            f"{venv} was installed from older dependency files: `make install` would update it, "
            "which this test must not do to the environment it runs in"
        )
    before = snapshot(venv)
    result = run_install(venv)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"[install 0/5] environment {venv} is up to date\n"
    assert snapshot(venv) == before


def test_placeholder_names_the_missing_compiled_op():
    from detectron2 import _C

    if not getattr(_C, "HCFORMER_PLACEHOLDER", False):
        pytest.skip("this detectron2 is a compiled build (the user's own): it has no placeholder")
    from detectron2.layers import ROIAlignRotated
    from detectron2.utils.collect_env import collect_env_info

    # detectron2's rotated ROIAlign has no Python fallback: it goes straight to _C
    pooler = ROIAlignRotated(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=0)
    rois = torch.tensor([[0.0, 4.0, 4.0, 4.0, 4.0, 30.0]])  # batch index, cx, cy, w, h, angle
    with pytest.raises(RuntimeError, match="op 'roi_align_rotated_forward' is not available"):
        pooler(torch.zeros(1, 1, 8, 8), rois)
    with pytest.raises(RuntimeError, match="installed as pure Python"):
        _C.nms_rotated
    # what default_setup asks of _C for its environment report still works
    assert "pure-Python detectron2" in collect_env_info()


def make_tar(path: Path, files: dict, symlinks: Optional[dict] = None) -> Path:
    """A .tar.gz with {name: bytes} files and {name: target} symbolic links."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


@pytest.mark.parametrize("data_filter", [True, False], ids=["data_filter", "fallback"])
def test_sdist_extraction_keeps_files_inside_the_destination(tmp_path, data_filter):
    if data_filter and not hasattr(tarfile, "data_filter"):
        pytest.skip(f"Python {sys.version.split()[0]} has no tarfile data filter (fallback only)")
    script = load_script("scripts/install_detectron2_pure_python.py")
    files = {"pkg-0.6/setup.py": b"setup()", "pkg-0.6/a/b.py": b""}
    good = make_tar(tmp_path / "good.tar.gz", files)
    script.extract_sdist(good, tmp_path / "out", data_filter=data_filter)
    assert (tmp_path / "out/pkg-0.6/setup.py").read_bytes() == b"setup()"
    assert (tmp_path / "out/pkg-0.6/a/b.py").is_file()

    for name, files, symlinks in [
        ("parent", {"pkg-0.6/../../escaped.py": b"x"}, {}),
        ("absolute", {str(tmp_path / "absolute.py"): b"x"}, {}),
        ("symlink", {}, {"pkg-0.6/link": "/etc/passwd"}),
    ]:
        bad = make_tar(tmp_path / f"{name}.tar.gz", files, symlinks)
        destination = tmp_path / f"out-{name}"
        if data_filter:  # refuses, or (an absolute name) strips the leading "/"
            with contextlib.suppress(tarfile.FilterError):
                script.extract_sdist(bad, destination, data_filter=True)
        else:  # the fallback refuses all three
            (member,) = [*files, *symlinks]
            with pytest.raises(RuntimeError, match=re.escape(repr(member))):
                script.extract_sdist(bad, destination, data_filter=False)
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "absolute.py").exists()


def test_removed_numpy_and_pillow_names_are_rewritten_and_nothing_else(tmp_path):
    script = load_script("scripts/install_detectron2_pure_python.py")
    source = (
        "a = np.zeros(3).astype(np.bool)\n"
        "b = np.array(x, dtype=np.int), np.full(2, 0, dtype=np.float), np.loadtxt(f, dtype=np.str)\n"
        "c = np.int64, np.float32, np.bool_, np.object_, np.integer, np.intp, np.float_(1)\n"
        "def f(interp=Image.LINEAR): return Image.NEAREST\n"
    )
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "module.py"
    path.write_text(source)
    script.modernise_sources(tmp_path)
    assert path.read_text() == (
        "a = np.zeros(3).astype(bool)\n"
        "b = np.array(x, dtype=int), np.full(2, 0, dtype=float), np.loadtxt(f, dtype=str)\n"
        "c = np.int64, np.float32, np.bool_, np.object_, np.integer, np.intp, np.float_(1)\n"
        "def f(interp=Image.BILINEAR): return Image.NEAREST\n"
    )
    rewritten = path.read_text()
    script.modernise_sources(tmp_path)  # a second run (install.sh's --refresh) changes nothing
    assert path.read_text() == rewritten


def test_the_installed_detectron2_needs_no_removed_name():
    import detectron2
    from detectron2 import _C

    script = load_script("scripts/install_detectron2_pure_python.py")
    if not getattr(_C, "HCFORMER_PLACEHOLDER", False):
        pytest.skip("this detectron2 is a compiled build (the user's own): install.sh left it as it is")
    package = Path(detectron2.__file__).parent
    left = [f"{p.relative_to(package)}: {line.strip()}" for p in package.rglob("*.py")
            for line in p.read_text().splitlines()
            if script._NUMPY_ALIAS.search(line) or "Image.LINEAR" in line]
    assert left == []

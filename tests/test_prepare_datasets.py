"""The dataset preparation scripts in datasets/, on tiny inputs made in a temporary folder."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hcformer.checkpoint.atomic_files import HOST
from hcformer_shapes import ShapesSpec, ensure_shapes_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "datasets"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # worker processes unpickle functions by module name
    spec.loader.exec_module(module)
    return module


coco_script = load_script("prepare_coco_semantic_annos_from_panoptic_annos")
ade_script = load_script("prepare_ade20k_sem_seg")


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_coco_semantic_from_a_hand_made_panoptic_png(tmp_path):
    # 2 x 3 image: segment 7 (category 20), segment 300 (category 5, crowd), one void pixel.
    # Contiguous ids follow the category ids sorted: 5 -> 0, 9 -> 1, 20 -> 2.
    ids = np.array([[7, 7, 300], [0, 300, 7]])
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
    write_png(tmp_path / "panoptic_val" / "a.png", rgb)
    content = {
        "categories": [
            {"id": 20, "name": "b", "isthing": 0},
            {"id": 5, "name": "a", "isthing": 1},
            {"id": 9, "name": "c", "isthing": 1},
        ],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 7, "category_id": 20, "iscrowd": 0},
                    {"id": 300, "category_id": 5, "iscrowd": 1},
                ],
            }
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "panoptic_val.json").write_text(json.dumps(content))

    coco_script.main(["--root", str(tmp_path), "--splits", "val", "--workers", "1"])
    semantic = np.asarray(Image.open(tmp_path / "panoptic_semseg_val" / "a.png"))
    assert semantic.tolist() == [[2, 2, 0], [255, 0, 2]]


def test_coco_script_reproduces_the_shapes_panoptic_semseg_and_resumes(tmp_path):
    source = ensure_shapes_dataset(
        ShapesSpec(image_size=32, num_train=1, num_val=3, seed=1), str(tmp_path)
    )
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    expected = {p.name: np.asarray(Image.open(p)) for p in (root / "panoptic_semseg_val").iterdir()}
    shutil.rmtree(root / "panoptic_semseg_val")

    paths = (str(root / "annotations" / "panoptic_val.json"), str(root / "panoptic_val"))
    output = root / "panoptic_semseg_val"
    assert coco_script.prepare_split(*paths, str(output), workers=2) == 3
    for name, labels in expected.items():
        assert np.array_equal(np.asarray(Image.open(output / name)), labels)

    # Resume: only the missing file is written again, finished ones are left alone.
    (output / "000002.png").unlink()
    untouched = os.stat(output / "000001.png").st_mtime_ns
    assert coco_script.prepare_split(*paths, str(output)) == 1
    assert os.stat(output / "000001.png").st_mtime_ns == untouched
    assert sorted(p.name for p in output.iterdir()) == sorted(expected)  # no temporary files left


def test_ade20k_labels_are_shifted_and_other_becomes_ignore(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    write_png(ade / "annotations" / "training" / "x.png", [[0, 1], [150, 7]])
    write_png(ade / "annotations" / "validation" / "y.png", [[3, 0]])
    (ade / "annotations" / "validation" / "notes.txt").write_text("not a label")

    ade_script.main(["--root", str(tmp_path), "--workers", "1"])
    out = ade / "annotations_detectron2"
    assert np.asarray(Image.open(out / "training" / "x.png")).tolist() == [[255, 0], [149, 6]]
    assert np.asarray(Image.open(out / "validation" / "y.png")).tolist() == [[2, 255]]
    assert sorted(os.listdir(out / "validation")) == ["y.png"]

    # A rerun skips finished files (a corrupt-looking marker proves it was not rewritten).
    (out / "training" / "x.png").write_bytes(b"kept")
    assert (
        ade_script.prepare_split(str(ade / "annotations" / "training"), str(out / "training")) == 0
    )
    assert (out / "training" / "x.png").read_bytes() == b"kept"


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ade_script.main(["--root", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
        coco_script.main(["--root", str(tmp_path), "--splits", "val2017"])


@pytest.mark.parametrize("script", [ade_script, coco_script], ids=["ade20k", "coco"])
def test_a_crash_while_writing_leaves_no_partial_png_and_a_rerun_finishes(tmp_path, monkeypatch, script):
    """Kill the conversion in the middle of writing a PNG: no file under its final name."""
    labels = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    real_save = Image.Image.save
    written = []

    def crash_on_second_file(image, fp, *args, **kwargs):
        real_save(image, fp, *args, **kwargs)
        written.append(fp)
        if len(written) == 2:
            fp.flush()
            fp.truncate(20)  # half a PNG on disk...
            raise KeyboardInterrupt  # ...when the process is stopped

    def save(name):  # how both scripts write a PNG
        script.write_atomically(str(out / name), lambda f: Image.fromarray(labels).save(f, format="PNG"))

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(Image.Image, "save", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        for name in ("a.png", "b.png", "c.png"):
            save(name)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert sorted(os.listdir(out)) == ["a.png"]  # b.png was never renamed into place
    for name in ("b.png", "c.png"):  # the rerun writes what is missing
        save(name)
    assert all(np.array_equal(np.asarray(Image.open(out / n)), labels) for n in ("a.png", "b.png", "c.png"))


def hand_made_inputs(script, root):
    """Two label PNGs for ``script``: (arguments of its prepare_split, its output folder)."""
    labels = np.array([[1, 2], [3, 0]])
    if script is ade_script:
        for name in ("a.png", "b.png"):
            write_png(root / "in" / name, labels)
        return [str(root / "in"), str(root / "out")], root / "out"
    rgb = np.stack([labels, np.zeros_like(labels), np.zeros_like(labels)], -1)  # segment id = R
    segments = [{"id": i, "category_id": 10 * i, "iscrowd": 0} for i in (1, 2, 3)]
    annotations = []
    for name in ("a.png", "b.png"):
        write_png(root / "panoptic" / name, rgb)
        annotations.append({"image_id": name, "file_name": name, "segments_info": segments})
    categories = [{"id": 10 * i, "name": str(i), "isthing": 1} for i in (1, 2, 3)]
    (root / "panoptic.json").write_text(json.dumps({"categories": categories, "annotations": annotations}))
    return [str(root / "panoptic.json"), str(root / "panoptic"), str(root / "out")], root / "out"


@pytest.mark.slow
@pytest.mark.parametrize("script", [ade_script, coco_script], ids=["ade20k", "coco"])
def test_a_rerun_removes_the_temporary_files_of_a_killed_run(tmp_path, script):
    """SIGKILL between writing a temporary PNG and renaming it: no ``finally`` runs, so the
    temporary file stays; the next run deletes it, and only it."""
    args, out = hand_made_inputs(script, tmp_path)
    killed_run = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        f"import {script.__name__} as script\n"
        "os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"script.prepare_split(*{args!r}, workers=1)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", killed_run], stderr=subprocess.PIPE, text=True)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == -signal.SIGKILL, stderr
    assert os.listdir(out) == [f".a.png.{run.pid}@{HOST}.tmp"]  # what the killed run left

    # around it: a temporary file of a run still writing here, and files that are not ours
    still_writing = subprocess.Popen(["sleep", "60"])
    try:
        kept = [f".b.png.{still_writing.pid}@{HOST}.tmp", f".c.png.{run.pid}@another-host.tmp", ".notes.tmp-1", "c.png.tmp-1"]
        for name in kept:
            (out / name).write_bytes(b"")
        assert script.prepare_split(*args, workers=1) == 2
    finally:
        still_writing.kill()
        still_writing.wait()
    assert sorted(os.listdir(out)) == sorted(kept + ["a.png", "b.png"])
    for name in ("a.png", "b.png"):
        assert Image.open(out / name).size == (2, 2)

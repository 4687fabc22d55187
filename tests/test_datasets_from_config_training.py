"""Each DATASETS.COCO_INSTANCES / COCO_PANOPTIC / SEM_SEG key end to end, as a user runs it:
``train_net.py`` trains a few iterations on a dataset given only on the command line, with
MODEL.SEM_SEG_HEAD.NUM_CLASSES -1, and ``--eval-only`` — started from the config.yaml training
saved, or in two processes — scores exactly what training's final evaluation scored; the
visualiser and the demo find the dataset in that config too.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from test_datasets_from_config import SHAPE_NAMES, gappy_instances_json
from test_eval_only import read_copypaste, without_nan
from tiny_configs import ROOT, TINY_SHAPES_OVERRIDES, load_script

from hcformer_shapes import ShapesSpec, ensure_shapes_dataset

CONFIGS = ROOT / "configs" / "shapes"
# a run takes 10-40 s; past this it hangs (as the final PQ evaluation did, see engine.interruption)
TRAIN_NET_TIMEOUT_S = 300
TRAIN = ["SEED", "0", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "-1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    return Path(ensure_shapes_dataset(ShapesSpec(image_size=64, num_train=2, num_val=2, seed=3), str(root)))


def train_net(tmp_path: Path, config: Path, output: str, *arguments: str):
    """Run train_net.py in tmp_path (relative dataset paths are taken from there); return the
    metrics of its log and the log."""
    # CUDA hidden: the two-process test runs gloo CPU processes also where GPUs are
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    # -X faulthandler (inherited by the processes it spawns): a run that hangs is stopped with
    # SIGABRT to its whole process group, and every process prints the stacks of its threads
    command = [sys.executable, "-X", "faulthandler", str(ROOT / "train_net.py"), "--config-file", str(config),
               *arguments, *TINY_SHAPES_OVERRIDES, "OUTPUT_DIR", output]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=TRAIN_NET_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        _, stderr = process.communicate(timeout=60)
        pytest.fail(f"train_net.py still running after {TRAIN_NET_TIMEOUT_S} s; where it was:\n{stderr[-8000:]}")
    assert process.returncode == 0, stderr[-3000:]
    # --eval-only may write into a folder of its own inside OUTPUT_DIR: the newest log is this run's
    logs = [tmp_path / output / "log.txt", *(tmp_path / output).glob("eval_*/log.txt")]
    log = max((p for p in logs if p.is_file()), key=lambda p: p.stat().st_mtime_ns).read_text()
    return read_copypaste(log), log


def train_then_evaluate(tmp_path: Path, config: Path, datasets: List[str], name: str, *eval_arguments: str):
    """Train on ``name`` (registered by the ``datasets`` overrides), evaluate model_final with the
    config training saved; both reports must be equal. Returns them and the logs."""
    selection = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)"]
    trained, train_log = train_net(tmp_path, config, "train", *datasets, *selection, *TRAIN)
    evaluated, eval_log = train_net(
        tmp_path, tmp_path / "train" / "config.yaml", "eval", "--eval-only", *eval_arguments,
        "MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth"),
    )
    assert "Starting training" not in eval_log
    assert without_nan(evaluated) == without_nan(trained)
    return trained, train_log, eval_log


@pytest.mark.slow
def test_coco_instances_key(shapes, tmp_path):
    # 0-based ids with gaps and an unannotated "_background_" category, relative paths
    gappy_instances_json(shapes, tmp_path / "mine.json")
    os.symlink(shapes / "images" / "val", tmp_path / "images")
    datasets = ["DATASETS.COCO_INSTANCES", '[["mine", "mine.json", "images"]]']
    trained, train_log, eval_log = train_then_evaluate(
        tmp_path, CONFIGS / "instance-segmentation" / "hcformer_R18_shapes.yaml", datasets, "mine"
    )
    assert "NUM_CLASSES -1: 5 classes, from the training dataset(s) ['mine'] (len(metadata.thing_classes))" in train_log
    assert set(trained) == {"segm"}
    # per-category AP under the dataset's own names (the unannotated one has no AP: nan)
    for name in ["_background_"] + SHAPE_NAMES:
        assert f"| {name} " in eval_log


@pytest.mark.slow
def test_coco_panoptic_key_on_a_converted_real_photo(tmp_path, dataset_names):
    # what an annotation tool exports, converted: a JPEG photo and polygons
    paths = load_script("datasets/voc_sample.py").write_voc_coco_instances(str(tmp_path / "voc"))
    converter = load_script("datasets/prepare_panoptic_from_instances.py")
    assert converter.main([paths["json_file"], paths["image_root"], str(tmp_path / "voc" / "panoptic")]) == 0
    (tmp_path / "voc" / "panoptic" / "panoptic_semseg").rename(tmp_path / "voc" / "semantic")  # passed below

    entry = ["voc", "voc/panoptic/panoptic.json", "voc/panoptic/panoptic", "voc/images", "voc/semantic"]
    datasets = ["DATASETS.COCO_PANOPTIC", json.dumps([entry])]
    trained, train_log, _ = train_then_evaluate(
        tmp_path, CONFIGS / "panoptic-segmentation" / "hcformer_R18_shapes.yaml", datasets, "voc"
    )
    assert "NUM_CLASSES -1: 21 classes" in train_log  # 20 VOC classes + background
    assert {"panoptic_seg", "sem_seg", "segm"} <= set(trained)

    # the visualiser and the demo see the dataset too, from the same config file
    cwd = os.getcwd()
    os.chdir(tmp_path)
    dataset_names.append("voc")
    try:
        summary = load_script("tools/visualize_hierarchy.py").main([
            "--config-file", "train/config.yaml", "--dataset", "voc", "--num-images", "1",
            "--output", "panels", "MODEL.WEIGHTS", "train/model_final.pth",
        ])
        load_script("demo/demo.py").main([
            "--config-file", "train/config.yaml", "--input", "voc/images/voc_sample.jpg", "--output", "demo",
            "--save-predictions", "--confidence-threshold", "0", "MODEL.WEIGHTS", "train/model_final.pth",
        ])
    finally:
        os.chdir(cwd)
    (image,) = summary["images"]
    assert image["ground_truth"] == "panoptic" and 0 <= image["scores"]["level0"]["UE"] <= 1
    assert (tmp_path / "panels" / "1_hierarchy.png").is_file()
    # the demo's instances carry the dataset's own category ids, VOC's 1..20 (contiguous: 0..19)
    instances = json.loads((tmp_path / "demo" / "voc_sample_instances.json").read_text())
    assert instances and {i["category_id"] for i in instances} <= set(range(1, 21))


@pytest.mark.slow
def test_sem_seg_key_evaluated_in_two_processes(shapes, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(SHAPE_NAMES + ["sky", "ground"]) + "\n")
    entry = ["mine_sem", str(shapes / "images" / "val"), str(shapes / "annotations" / "val"), "classes.txt"]
    datasets = ["DATASETS.SEM_SEG", json.dumps([entry])]
    trained, train_log, eval_log = train_then_evaluate(
        tmp_path, CONFIGS / "semantic-segmentation" / "hcformer_R18_shapes.yaml", datasets, "mine_sem",
        "--num-gpus", "2", "--dist-url", "auto",
    )
    assert "NUM_CLASSES -1: 6 classes" in train_log
    assert "world size: 2" in eval_log.lower() or "num_gpus=2" in eval_log
    assert set(trained) == {"sem_seg"}
    for name in ["sky", "ground"]:
        assert f"IoU-{name}" in eval_log

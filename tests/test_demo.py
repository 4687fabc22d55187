"""demo/demo.py on the CPU: images in batches, a video, saved predictions, the confidence threshold.

The model is the tiny random HCFormer of conftest.py, configured for each task as configs/ does.
"""
import json
import logging
import os

import cv2
import numpy as np
import pytest
from panopticapi.utils import rgb2id
from PIL import Image

from tiny_configs import load_script, write_task_config

HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py")


@pytest.fixture
def images(tmp_path):
    """Three small images of different content (and one different size)."""
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(HEIGHT, WIDTH), (HEIGHT, WIDTH), (WIDTH, HEIGHT)]):
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _run(demo, tmp_path, task, *args, **config_options):
    config = write_task_config(tmp_path, task, **config_options)
    out = tmp_path / "out"
    written = demo.main(["--config-file", str(config), "--output", str(out), *args])
    return out, written


def test_panoptic_images_in_batches_with_saved_predictions(demo, tmp_path, images):
    out, written = _run(
        demo, tmp_path, "panoptic", "--input", str(tmp_path / "images" / "*.png"),
        "--batch-size", "2", "--save-predictions", "--confidence-threshold", "0.5", confident=0.6,
    )
    for i in range(3):
        stem = out / f"img{i}"
        expected = [f"{stem}.png", f"{stem}_panoptic.png", f"{stem}_panoptic.json", f"{stem}_instances.json",
                    f"{stem}_sem_seg.png"]
        assert all(p in written for p in expected)
    picture = cv2.imread(str(out / "img2.png"))
    assert picture.shape[:2] == (WIDTH, HEIGHT)  # the original size of the third image

    ids = rgb2id(np.asarray(Image.open(out / "img0_panoptic.png").convert("RGB")))
    info = json.loads((out / "img0_panoptic.json").read_text())
    assert info["image_id"] == "img0" and info["file_name"] == "img0_panoptic.png"
    # every query says class 1 (p = 0.6 > 0.5) over the whole image: one segment, everywhere
    assert info["segments_info"] == [
        {"id": 1, "category_id": 1, "category_name": "class 1", "isthing": False, "area": HEIGHT * WIDTH}
    ]
    assert (ids == 1).all()

    semantic = np.asarray(Image.open(out / "img0_sem_seg.png"))
    assert semantic.shape == (HEIGHT, WIDTH) and (semantic == 1).all()


def test_confidence_threshold_filters_instances_and_panoptic_segments(demo, tmp_path, images):
    # Every query of the model says class 1 with p = 0.6 and covers the image; instance inference
    # ranks the 8 queries × 6 classes: 8 pairs score 0.6, the others (1 − 0.6) / 6 ≈ 0.067.
    inputs = ["--input", str(images[0]), "--save-predictions"]
    top_12 = ["TEST.DETECTIONS_PER_IMAGE", "12"]
    saved = {}
    for threshold, expected in [("0", 12), ("0.3", 8), ("0.65", 0), ("1.01", 0)]:
        out, _ = _run(demo, tmp_path, "instance", *inputs, "--confidence-threshold", threshold, *top_12, confident=0.6)
        saved[threshold] = json.loads((out / "img0_instances.json").read_text())
        assert len(saved[threshold]) == expected, threshold
        assert all(k["score"] >= float(threshold) for k in saved[threshold])
    assert not (out / "img0_panoptic.json").exists()  # instance-only config: no panoptic output
    instance = saved["0.3"][0]
    assert instance["image_id"] == "img0" and instance["category_id"] == 1 and instance["score"] == pytest.approx(0.6)
    assert instance["bbox"] == [0.0, 0.0, WIDTH, HEIGHT]  # XYWH of the whole-image mask
    assert isinstance(instance["segmentation"]["counts"], str)  # compressed RLE, JSON-ready
    assert instance["segmentation"]["size"] == [HEIGHT, WIDTH]

    # panoptic: the one query class (p = 0.6) makes a segment up to threshold 0.6, none above
    for threshold, segments in [("0.55", 1), ("0.65", 0)]:
        _run(demo, tmp_path, "panoptic", *inputs, "--confidence-threshold", threshold, confident=0.6)
        assert len(json.loads((out / "img0_panoptic.json").read_text())["segments_info"]) == segments
        assert rgb2id(np.asarray(Image.open(out / "img0_panoptic.png").convert("RGB"))).any() == bool(segments)


def test_semantic_config_with_a_hierarchy_level_overlay(demo, tmp_path, images):
    out, written = _run(
        demo, tmp_path, "semantic", "--input", str(images[0]), "--save-predictions", "--show-level", "1",
    )
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img0_sem_seg.png"]
    picture = cv2.imread(str(out / "img0.png"))
    assert picture.shape[1] == WIDTH and picture.shape[0] > HEIGHT  # the title band of the level
    with pytest.raises(ValueError, match="--show-level 9"):
        _run(demo, tmp_path, "semantic", "--input", str(images[0]), "--show-level", "9")


def test_video_file(demo, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (WIDTH, HEIGHT))
    assert writer.isOpened(), "opencv cannot write MJPG avi"
    rng = np.random.default_rng(1)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    writer.release()

    target = tmp_path / "out" / "clip_result.mp4"
    config = write_task_config(tmp_path, "panoptic")
    written = demo.main(
        ["--config-file", str(config), "--video-input", str(video), "--output", str(target),
         "--batch-size", "2", "--save-predictions", "--show-level", "0"]
    )
    assert str(target) in written
    assert sum(p.endswith("_panoptic.json") for p in written) == 3  # one per frame
    capture = cv2.VideoCapture(str(target))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3
    # the frames keep their width; --show-level adds a title band above them
    assert capture.get(cv2.CAP_PROP_FRAME_WIDTH) == WIDTH and capture.get(cv2.CAP_PROP_FRAME_HEIGHT) > HEIGHT
    capture.release()


def test_output_file_for_one_image(demo, tmp_path, images):
    config = write_task_config(tmp_path, "semantic")
    target = tmp_path / "result.jpg"
    assert demo.main(["--config-file", str(config), "--input", str(images[0]), "--output", str(target)]) == [str(target)]
    assert cv2.imread(str(target)).shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match="names one file"):
        demo.main(["--config-file", str(config), "--input", *map(str, images[:2]), "--output", str(target)])


def test_arguments_are_checked(demo, tmp_path):
    with pytest.raises(SystemExit):
        demo.parse_args(["--config-file", "x.yaml", "--input", "a.png", "--save-predictions"])  # no --output
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        _run(demo, tmp_path, "semantic", "--input", str(tmp_path / "nothing_here*.png"))


def test_a_corrupt_image_stops_the_batch_unless_bad_inputs_are_skipped(demo, tmp_path, images):
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a header, no image
    with pytest.raises(demo.BadSampleError, match="broken.png"):  # the default: the clear error, nothing skipped
        _run(demo, tmp_path, "semantic", "--input", str(tmp_path / "images"))

    hcformer_logger = logging.getLogger("hcformer")  # setup_logger stops propagation to caplog's handler
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hcformer_logger.addHandler(handler)
    try:
        out, written = _run(demo, tmp_path, "semantic", "--input", str(tmp_path / "images"), "--batch-size", "2",
                            "--skip-bad-inputs")
    finally:
        hcformer_logger.removeHandler(handler)
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["img0.png", "img1.png", "img2.png"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING and "MODEL.WEIGHTS" not in r.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("Skipped (--skip-bad-inputs): --input image ") and "broken.png" in warnings[0]
    assert warnings[1] == "1 of 4 images could not be read and were skipped (see above)"


def test_a_video_that_cannot_be_opened_says_why(demo, tmp_path):
    config = write_task_config(tmp_path, "semantic")

    def open_video(path):
        demo.main(["--config-file", str(config), "--video-input", str(path), "--output", str(tmp_path / "out.mp4")])

    with pytest.raises(FileNotFoundError, match="--video-input: no such file: .*missing.mp4"):
        open_video(tmp_path / "missing.mp4")
    with pytest.raises(IsADirectoryError, match=f"--video-input {tmp_path} is a directory, not a video file"):
        open_video(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4 is empty"):
        open_video(tmp_path / "empty.mp4")
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    with pytest.raises(ValueError) as error:
        open_video(tmp_path / "notes.mp4")
    assert str(error.value).startswith(f"--video-input {tmp_path / 'notes.mp4'}: OpenCV cannot decode it: it is not "
                                       "a video, or its codec is not in this OpenCV build (video backends: ")
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_video_is_called_unreadable(demo, tmp_path):
    config = write_task_config(tmp_path, "semantic")
    video = tmp_path / "private.mp4"
    video.write_bytes(b"\x00" * 16)
    video.chmod(0)
    with pytest.raises(PermissionError, match="private.mp4 cannot be read: Permission denied"):
        demo.main(["--config-file", str(config), "--video-input", str(video), "--output", str(tmp_path / "out.mp4")])

#!/usr/bin/env python
"""HCFormer demo: segment images, a video file or a webcam stream, and draw or save the results.

    # images (paths, globs or directories), 4 per model call, pictures and predictions to out/
    python demo/demo.py --config-file configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml \\
        --input "photos/*.jpg" --batch-size 4 --output out/ --save-predictions \\
        MODEL.WEIGHTS output/shapes_panoptic/model_final.pth
    # a video, with the clusters of hierarchy level 2 drawn over the prediction
    python demo/demo.py --config-file <config> --video-input clip.mp4 --show-level 2 \\
        --output out/clip.mp4 MODEL.WEIGHTS <weights>

What ``--confidence-threshold`` filters (default 0.5):

- instances: those whose score (class probability × mean mask probability) is below it are
  neither drawn nor saved;
- panoptic segments: queries whose class probability is not above it take no part in the
  panoptic result (MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD is set to it), so their pixels
  go to the remaining queries or stay unlabelled;
- semantic segmentation: nothing (every pixel gets its most likely class).

Runs on the CPU when CUDA is missing. ``--save-predictions`` writes, per image or frame, the
panoptic PNG (id2rgb) + JSON, the instances as COCO results JSON (RLE masks) and the semantic
PNG (see hcformer/utils/prediction_files.py).

An image that cannot be read (missing, corrupt, truncated, too large) stops the demo with an
error naming it; ``--skip-bad-inputs`` logs it and goes on with the others instead.
"""
import argparse
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import tqdm
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # predictor.py, as in detectron2's demo
import hcformer  # noqa: E402,F401  registers the models
import hcformer.data  # noqa: E402,F401  registers the datasets (their metadata names the classes)
from hcformer.data.image_reading import BadSampleError, read_image_file  # noqa: E402
from hcformer.engine.inference_model import inference_cfg  # noqa: E402
from hcformer_deploy.image_files import IMAGE_EXTENSIONS, expand_image_paths  # noqa: E402
from hcformer.utils.prediction_files import save_prediction  # noqa: E402
from predictor import VisualizationDemo, batches, read_frames  # noqa: E402

logger = logging.getLogger("hcformer.demo")

WINDOW_NAME = "HCFormer"
# OpenCV's writer codec per video file extension (mp4v and MJPG ship with opencv-python-headless)
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mov": "mp4v", ".mkv": "mp4v"}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="image files, globs or directories")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the default camera (stop with Esc or Ctrl-C)")
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="images: a directory (or a file for a single image); video / webcam: a video file "
        "(.mp4, .avi) or a directory. Without it, results are shown in a window.",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="see the description above (default 0.5)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images (or video frames) per model call")
    parser.add_argument(
        "--show-level", type=int, metavar="K", help="draw the cluster boundaries of hierarchy level K"
    )
    parser.add_argument(
        "--save-predictions", action="store_true", help="also write the predictions to files in --output"
    )
    parser.add_argument(
        "--skip-bad-inputs",
        action="store_true",
        help="log images that cannot be read and go on with the others (default: stop with an error naming the image)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.save_predictions and not args.output:
        parser.error("--save-predictions needs --output")
    return args


def setup_cfg(args: argparse.Namespace):
    cfg = inference_cfg(args.config_file, args.opts, freeze=False)
    # Panoptic inference keeps a query only if its class probability exceeds this threshold:
    # the demo's confidence threshold replaces the config's, as detectron2's demo does for its
    # detectors' score thresholds.
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    cfg.freeze()
    return cfg


def show(picture_bgr: np.ndarray, wait_ms: int) -> bool:
    """Show a picture in a window for ``wait_ms`` (0: until a key); False if the key was Esc."""
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, picture_bgr)
    except cv2.error as e:
        raise RuntimeError(
            "This OpenCV cannot open windows (opencv-python-headless has no GUI): "
            "pass --output to write the results to files instead"
        ) from e
    return cv2.waitKey(wait_ms) != 27


def _image_targets(args: argparse.Namespace, paths: List[str]) -> List[Tuple[str, str]]:
    """(picture file, prediction file stem) per input image.

    --output is one picture file if it has an image extension (one input image only), else a
    directory that receives <input name>.png and the prediction files.
    """
    names = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    if os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS and not os.path.isdir(args.output):
        if len(paths) > 1:
            raise ValueError(f"--output {args.output} names one file, but there are {len(paths)} input images")
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        return [(args.output, os.path.splitext(args.output)[0])]
    os.makedirs(args.output, exist_ok=True)
    return [(os.path.join(args.output, f"{name}.png"), os.path.join(args.output, name)) for name in names]


def _read_images(
    paths: List[str], args: argparse.Namespace, max_image_pixels: int
) -> Tuple[List[str], List[np.ndarray]]:
    """(paths, BGR images) of the images of ``paths`` that could be read: upright (EXIF), 3
    channels, 8 bits, at most INPUT.MAX_IMAGE_PIXELS. Another image raises an error naming it,
    or with --skip-bad-inputs is logged and left out."""
    read, images = [], []
    for path in paths:
        try:
            images.append(read_image_file(path, "BGR", max_image_pixels, role="--input image"))
        except BadSampleError as error:
            if not args.skip_bad_inputs:
                raise
            logger.warning("Skipped (--skip-bad-inputs): %s", error)
            continue
        read.append(path)
    return read, images


def run_on_images(demo: VisualizationDemo, args: argparse.Namespace, max_image_pixels: int = 0) -> List[str]:
    paths = expand_image_paths(args.input)
    if not paths:
        raise FileNotFoundError(f"--input {args.input}: no images found")
    targets = dict(zip(paths, _image_targets(args, paths))) if args.output else {}
    written, done = [], 0
    with tqdm.tqdm(total=len(paths), desc="images", unit="image", disable=not args.output) as progress:
        for batch in batches(paths, args.batch_size):
            start = time.perf_counter()
            batch_read, images = _read_images(batch, args, max_image_pixels)
            results = demo.run_on_images(images) if images else []
            logger.info("%d image(s) in %.2f s", len(batch_read), time.perf_counter() - start)
            for path, (prediction, picture) in zip(batch_read, results):
                _log_prediction(path, prediction)
                if not args.output:
                    if not show(picture, wait_ms=0):
                        return written
                    continue
                picture_file, stem = targets[path]
                if not cv2.imwrite(picture_file, picture):
                    raise OSError(f"OpenCV could not write {picture_file}")
                written.append(picture_file)
                if args.save_predictions:
                    written += save_prediction(prediction, stem, demo.metadata)
            done += len(batch_read)
            progress.update(len(batch))
    if done < len(paths):
        logger.warning("%d of %d images could not be read and were skipped (see above)", len(paths) - done, len(paths))
    return written


def _log_prediction(name: str, prediction: Dict) -> None:
    found = []
    if "panoptic_seg" in prediction:
        found.append(f"{len(prediction['panoptic_seg'][1])} segments")
    if "instances" in prediction:
        found.append(f"{len(prediction['instances'])} instances")
    logger.info("%s: %s", name, ", ".join(found) or "semantic segmentation")


def _video_target(args: argparse.Namespace, default_name: str) -> str:
    if os.path.isdir(args.output) or args.output.endswith(os.sep):
        os.makedirs(args.output, exist_ok=True)
        return os.path.join(args.output, default_name + ".mp4")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    return args.output


def open_video(path: str) -> cv2.VideoCapture:
    """An opened capture of the video file ``path``, or an error saying why there is none: the
    file is missing, cannot be read, is empty, or OpenCV cannot decode it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--video-input: no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"--video-input {path} is a directory, not a video file")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as error:
        raise type(error)(f"--video-input {path} cannot be read: {error.strerror}") from None
    if empty:
        raise ValueError(f"--video-input {path} is empty (0 bytes)")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        backends = [cv2.videoio_registry.getBackendName(b) for b in cv2.videoio_registry.getStreamBackends()]
        raise ValueError(
            f"--video-input {path}: OpenCV cannot decode it: it is not a video, or its codec is not in "
            f"this OpenCV build (video backends: {', '.join(backends) or 'none'})"
        )
    return capture


def run_on_video(demo: VisualizationDemo, args: argparse.Namespace) -> List[str]:
    if args.webcam:
        capture, name, batch_size = cv2.VideoCapture(0), "webcam", 1  # one frame at a time: no lag
    else:
        capture = open_video(args.video_input)
        name, batch_size = os.path.splitext(os.path.basename(args.video_input))[0], args.batch_size
    if not capture.isOpened():
        raise RuntimeError("OpenCV could not open the webcam")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None

    target = _video_target(args, name) if args.output else None
    writer, written = None, []
    try:
        frames = demo.run_on_video(read_frames(capture), batch_size)
        for index, (prediction, picture) in enumerate(tqdm.tqdm(frames, total=num_frames, desc=name, unit="frame")):
            if target is None:
                if not show(picture, wait_ms=1):
                    break
                continue
            if writer is None:  # sized by the first picture: a --show-level title makes it taller
                extension = os.path.splitext(target)[1].lower()
                codec = VIDEO_CODECS.get(extension, "mp4v")
                height, width = picture.shape[:2]
                writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*codec), fps, (width, height), True)
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {target} with codec {codec}: try a .mp4 or .avi file")
                written.append(target)
            writer.write(np.ascontiguousarray(picture))
            if args.save_predictions:
                stem = os.path.join(os.path.dirname(target), f"{name}_{index:06d}")
                written += save_prediction(prediction, stem, demo.metadata)
    except KeyboardInterrupt:
        logger.info("Stopped")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if target is None:
            try:
                cv2.destroyAllWindows()
            except cv2.error:  # no GUI: show() has already said so
                pass
    return written


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Run the demo; return the paths of the files it wrote."""
    setup_logger(name="hcformer")
    setup_logger(name="fvcore")
    args = parse_args(argv)
    logger.info("Arguments: %s", args)
    cfg = setup_cfg(args)
    demo = VisualizationDemo(cfg, args.confidence_threshold, args.show_level)
    if args.input:
        return run_on_images(demo, args, cfg.INPUT.MAX_IMAGE_PIXELS)
    return run_on_video(demo, args)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Batch prediction and drawing for the demo: images in, (predictions, picture) out.

Kept next to demo.py, as in detectron2, because it is glue: the pieces it glues are in the
library (model building in ``hcformer.engine.inference_model``, the clusterings the model
returns on request, drawing in ``hcformer.utils.hierarchy_visualization``).
"""
import itertools
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from hcformer.engine.inference_model import build_inference_model
from hcformer.utils.hierarchy_visualization import add_title, draw_boundaries, draw_prediction, visualization_metadata


def batches(items: Iterable, size: int) -> Iterator[List]:
    """``items`` in lists of ``size`` (the last one may be shorter), each read when it is needed."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def filter_by_confidence(prediction: Dict, threshold: float) -> Dict:
    """The prediction without its instances scoring below ``threshold``.

    Only "instances" are filtered here. Panoptic segments are filtered inside the model, before
    pixels are assigned (see ``demo.py``'s ``setup_cfg``), and "sem_seg" has no scores.
    """
    if "instances" not in prediction:
        return prediction
    instances = prediction["instances"]
    return {**prediction, "instances": instances[instances.scores >= threshold]}


class BatchPredictor:
    """detectron2's ``DefaultPredictor`` for lists of images: one model call per batch.

    Images are resized by the test-time shortest-edge resize of the config, then given to the
    model together; every output is at its image's original size.

    Args:
        cfg: the (frozen) config; MODEL.WEIGHTS is loaded.
        hierarchy_level: if set, every output also holds "clusterings" {"level<k>": the (H, W)
            int64 hard clustering of that level at the image size} and "level_strides".
    """

    def __init__(self, cfg: CfgNode, hierarchy_level: Optional[int] = None):
        self.model = build_inference_model(cfg)
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        # INPUT.FORMAT is RGB or BGR: validate_config (inference_cfg) checked it
        self.input_format = cfg.INPUT.FORMAT
        self.hierarchy_level = hierarchy_level

    def _model_input(self, image_bgr: np.ndarray) -> Dict:
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, images_bgr: List[np.ndarray]) -> List[Dict]:
        """Outputs of the model for (H, W, 3) uint8 BGR images (as OpenCV reads them)."""
        inputs = [self._model_input(image) for image in images_bgr]
        if self.hierarchy_level is None:
            with torch.no_grad():  # no clusterings, even with TEST.HIERARCHY_EVAL in the config
                return self.model(inputs, clusterings=[])
        try:
            with torch.no_grad():
                return self.model(inputs, clusterings=[f"level{self.hierarchy_level}"])
        except ValueError as e:
            raise ValueError(f"--show-level {self.hierarchy_level}: {e}") from None


class VisualizationDemo:
    """Predictions drawn with detectron2's Visualizer, optionally over one level's clusters.

    Args:
        cfg: the demo's config (see ``demo.py``'s ``setup_cfg``).
        confidence_threshold: instances below it are neither drawn nor returned.
        show_level: draw the cluster boundaries of this hierarchy level over the prediction.
    """

    def __init__(self, cfg: CfgNode, confidence_threshold: float = 0.5, show_level: Optional[int] = None):
        self.predictor = BatchPredictor(cfg, hierarchy_level=show_level)
        self.metadata = visualization_metadata(cfg)
        self.confidence_threshold = confidence_threshold
        self.show_level = show_level

    def draw(self, image_rgb: np.ndarray, prediction: Dict) -> np.ndarray:
        """(H, W, 3) uint8 RGB picture of one prediction."""
        picture = draw_prediction(image_rgb, prediction, self.metadata, self.confidence_threshold)
        if self.show_level is not None:
            picture = draw_boundaries(picture, prediction["clusterings"][f"level{self.show_level}"].cpu().numpy())
            stride = prediction["level_strides"][self.show_level]
            title = f"clusters of level {self.show_level}" + (f" (stride {stride})" if stride else "")
            picture = add_title(picture, [title])
        return picture

    def run_on_images(self, images_bgr: List[np.ndarray]) -> List[Tuple[Dict, np.ndarray]]:
        """One batch: per image, (filtered prediction, BGR picture, as OpenCV writes and shows it)."""
        predictions = [filter_by_confidence(p, self.confidence_threshold) for p in self.predictor(images_bgr)]
        return [(p, self.draw(image[:, :, ::-1], p)[:, :, ::-1]) for image, p in zip(images_bgr, predictions)]

    def run_on_video(self, frames_bgr: Iterable[np.ndarray], batch_size: int = 1) -> Iterator[Tuple[Dict, np.ndarray]]:
        """(prediction, BGR picture) per frame, frames predicted ``batch_size`` at a time."""
        for batch in batches(frames_bgr, batch_size):
            yield from self.run_on_images(batch)


def read_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The BGR frames of an opened capture until it ends (a file) or fails (a webcam)."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame

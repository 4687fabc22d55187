"""Run an export directory on images: the demo's predictions without detectron2 or hcformer.

``ExportedModel(directory)`` reads ``export.json`` (``contract``), opens the model file with
onnxruntime or ``torch.jit.load``, and for one RGB image does what the demo does with the eager
model: resize the shortest edge as detectron2's ``ResizeShortestEdge`` (PIL bilinear, the test
sizes of the config), run the graph, and post-process with ``hcformer_deploy.postprocess`` —
the functions the eager model calls. A dynamic-size export therefore gives the eager demo's
predictions (to the exported graph's rounding); a fixed-size export is fed the image resized to
its size, aspect ratio not kept, and its predictions are resized back to the image.
"""
import logging
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .contract import INPUT_NAME, read_export_info
from .id_maps import resize_ids
from .postprocess import instance_predictions, panoptic_inference, resize_to_output, semantic_inference

__all__ = ["ExportedModel", "open_model_file", "shortest_edge_size"]

logger = logging.getLogger(__name__)


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new height, new width) with the shorter side ``short_edge`` and the longer at most
    ``max_size``, rounded as detectron2's ``ResizeShortestEdge.get_output_shape``."""
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def open_model_file(path: str, fmt: str, num_threads: Optional[int] = None) -> Callable[[np.ndarray], List[torch.Tensor]]:
    """The exported model file ``path`` of format ``fmt``, loaded once, as a function of a
    (1, 3, H, W) float32 image returning the graph's outputs in order; ``num_threads``: intra-op
    threads of onnxruntime / torch (None: their default)."""
    if fmt == "onnx":
        import onnxruntime  # only an ONNX export needs it

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        # no busy-waiting for work after a run (onnxruntime's default): every prediction runs the
        # post-processing in PyTorch right after the graph, on the cores spinning threads would hold
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda image: [torch.from_numpy(v) for v in session.run(None, {INPUT_NAME: image})]
    if num_threads:
        torch.set_num_threads(num_threads)
    module = torch.jit.load(path, map_location="cpu").eval()

    def run(image: np.ndarray) -> List[torch.Tensor]:
        with torch.no_grad():
            return list(module(torch.from_numpy(image)))

    return run


class ExportedModel:
    """An export directory, ready to run.

    Args:
        directory: written by ``tools/export_model.py``.
        confidence_threshold: if set, replaces the export's object mask threshold (panoptic
            queries must score above it), as the demo's ``--confidence-threshold`` does.
        num_threads: intra-op threads of onnxruntime / torch (None: their default).
    """

    def __init__(self, directory: str, confidence_threshold: Optional[float] = None, num_threads: Optional[int] = None):
        self.info = read_export_info(directory)
        self.format = self.info["format"]
        self.outputs = list(self.info["outputs"])
        self.levels = [name for name in self.outputs if name.startswith("level")]  # with --clusterings
        post = self.info["postprocess"]
        self.num_classes = post["num_classes"]
        self.thing_ids = set(post["thing_ids"])
        self.object_mask_threshold = post["object_mask_threshold"] if confidence_threshold is None else confidence_threshold
        self._run = open_model_file(self.info["model_path"], self.format, num_threads)

    # ---------------------------------------------------------------- the graph
    def run_graph(self, image: np.ndarray) -> Dict[str, torch.Tensor]:
        """The graph's outputs, by name, for a (1, 3, H, W) float32 RGB 0–255 image."""
        size = self.info["input"]
        if not size["dynamic"] and tuple(image.shape[-2:]) != (size["height"], size["width"]):
            raise ValueError(
                f"this export takes {size['height']}x{size['width']} images only, got "
                f"{image.shape[-2]}x{image.shape[-1]} (export with --dynamic for any size)"
            )
        return dict(zip(self.outputs, self._run(image)))

    def model_input(self, image_rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB → (1, 3, H, W) float32: the test-time resize of the config for
        a dynamic export, the export's size otherwise."""
        size = self.info["input"]
        height, width = image_rgb.shape[:2]
        if size["dynamic"]:
            new_h, new_w = (height, width) if size["min_size_test"] == 0 else shortest_edge_size(
                height, width, size["min_size_test"], size["max_size_test"])
        else:
            new_h, new_w = size["height"], size["width"]
        if (new_h, new_w) != (height, width):
            image_rgb = np.asarray(Image.fromarray(image_rgb).resize((new_w, new_h), Image.BILINEAR))
        return np.ascontiguousarray(image_rgb.transpose(2, 0, 1))[None].astype(np.float32)

    # ---------------------------------------------------------------- a prediction
    def __call__(self, image_rgb: np.ndarray) -> Dict:
        """One image's prediction, as the eager model's output dict: "sem_seg" (K, h, w),
        "panoptic_seg" ((h, w) int32 ids, segments_info), "instances" (a dict of pred_masks,
        pred_boxes, scores, pred_classes), as the export's tasks ask; "clusterings"
        {"level<k>": (h, w) int64} if exported with them. h, w: the image's size."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
        height, width = image_rgb.shape[:2]
        fed = self.model_input(image_rgb)
        outputs = self.run_graph(fed)
        return self.postprocess(outputs, tuple(fed.shape[-2:]), (height, width))

    def postprocess(self, outputs: Dict[str, torch.Tensor], fed_size: Tuple[int, int],
                    output_size: Tuple[int, int]) -> Dict:
        """``HCFormer.inference`` for one image from the graph's outputs."""
        info, post, tasks = self.info, self.info["postprocess"], self.info["tasks"]
        d = info["input"]["size_divisibility"]
        padded = tuple(-(-side // d) * d for side in fed_size)
        height, width = output_size
        mask_cls = outputs["pred_logits"][0]
        mask_pred = F.interpolate(outputs["pred_masks"], size=padded, mode="bilinear", align_corners=False)[0]
        result: Dict = {}
        if post["resize_masks_first"]:
            mask_pred = resize_to_output(mask_pred, fed_size, height, width)
        mask_probs = mask_pred.sigmoid() if tasks["semantic"] else None
        if tasks["semantic"]:
            sem_seg = semantic_inference(mask_cls, mask_pred, mask_probs)
            result["sem_seg"] = sem_seg if post["resize_masks_first"] else resize_to_output(sem_seg, fed_size, height, width)
        if tasks["panoptic"]:
            result["panoptic_seg"] = panoptic_inference(
                mask_cls, mask_pred, self.num_classes, self.object_mask_threshold, post["overlap_threshold"],
                self.thing_ids, mask_probs,
            )
        if tasks["instance"]:
            result["instances"] = instance_predictions(
                mask_cls, mask_pred, self.num_classes, post["num_queries"], post["top_k"], self.thing_ids,
                tasks["panoptic"], mask_probs,
            )
        if self.levels:
            result["clusterings"] = {name: resize_ids(outputs[name][0], (height, width)) for name in self.levels}
        return result


"""Write one image's prediction in the demo's file formats, without detectron2: the one writer
of the eager demo (``--save-predictions``, through ``hcformer.utils.prediction_files``, which
documents the formats) and of exported models (``tools/run_exported.py``).

``<stem>_panoptic.png`` (panopticapi's id2rgb) and ``<stem>_panoptic.json``,
``<stem>_instances.json`` (COCO results, RLE masks, XYWH boxes), ``<stem>_sem_seg.png``; category
ids are the dataset's where ``classes`` (export.json's, or ``metadata_classes``) maps them.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb
from PIL import Image

__all__ = ["save_prediction"]


def _to_dataset_ids(classes: Dict, isthing: bool) -> Dict[int, int]:
    """contiguous id → dataset category id, from export.json's ``classes``."""
    key = "thing_dataset_id_to_contiguous_id" if isthing else "stuff_dataset_id_to_contiguous_id"
    return {int(contiguous): int(dataset_id) for dataset_id, contiguous in (classes.get(key) or {}).items()}


def _class_name(classes: Dict, contiguous_id: int, isthing: bool) -> Optional[str]:
    names = classes.get("thing_classes" if isthing else "stuff_classes") or []
    return names[contiguous_id] if contiguous_id < len(names) else None


def save_prediction(prediction: Dict, stem: str, classes: Dict) -> List[str]:
    """Write the prediction's panoptic, instance and semantic outputs next to ``stem``.

    Args:
        prediction: one image's output of ``ExportedModel`` (instances as a dict of tensors:
            pred_boxes XYXY (N, 4), pred_masks (N, H, W), pred_classes, scores).
        stem: path prefix of the files, e.g. ``out/000123``; its directory is created, and its
            base name is the image id of the JSON files.
        classes: class names and dataset category ids (export.json's ``classes``).

    Returns:
        the paths written.
    """
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    image_id = os.path.basename(stem)
    written = []

    if "panoptic_seg" in prediction:
        panoptic_seg, segments_info = prediction["panoptic_seg"]
        ids = panoptic_seg.cpu().numpy().astype(np.int64)
        png = f"{stem}_panoptic.png"
        Image.fromarray(id2rgb(ids)).save(png)
        segments = []
        for segment in segments_info:
            isthing, contiguous = bool(segment["isthing"]), int(segment["category_id"])
            segments.append({
                "id": int(segment["id"]),
                "category_id": _to_dataset_ids(classes, isthing).get(contiguous, contiguous),
                "category_name": _class_name(classes, contiguous, isthing),
                "isthing": isthing,
                "area": int((ids == segment["id"]).sum()),
            })
        path = f"{stem}_panoptic.json"
        with open(path, "w") as f:
            json.dump({"image_id": image_id, "file_name": os.path.basename(png), "segments_info": segments}, f)
        written += [png, path]

    if "instances" in prediction:
        instances = prediction["instances"]
        to_dataset = _to_dataset_ids(classes, isthing=True)
        boxes = instances["pred_boxes"].cpu().numpy().astype(np.float64)
        boxes[:, 2:] -= boxes[:, :2]  # XYXY → XYWH, as COCO results have it
        masks = instances["pred_masks"].cpu().numpy().astype(np.uint8)
        results = []
        for k in range(len(masks)):
            rle = mask_util.encode(np.asfortranarray(masks[k][:, :, None]))[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            label = int(instances["pred_classes"][k])
            results.append({
                "image_id": image_id,
                "category_id": to_dataset.get(label, label),
                "bbox": boxes[k].tolist(),
                "score": float(instances["scores"][k]),
                "segmentation": rle,
            })
        path = f"{stem}_instances.json"
        with open(path, "w") as f:
            json.dump(results, f)
        written.append(path)

    if "sem_seg" in prediction:
        labels = prediction["sem_seg"].argmax(0).cpu().numpy()
        dtype = np.uint8 if prediction["sem_seg"].shape[0] <= 256 else np.uint16
        path = f"{stem}_sem_seg.png"
        Image.fromarray(labels.astype(dtype)).save(path)
        written.append(path)
    return written

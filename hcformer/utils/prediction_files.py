"""Write one image's predictions to files, in the formats the COCO tools read.

For an output of :class:`~hcformer.modeling.meta_arch.HCFormer` (one dict of ``model(inputs)``)
and a file stem ``<dir>/<name>``:

====================  ================================================================================
output                files
====================  ================================================================================
"panoptic_seg"        ``<name>_panoptic.png``: segment ids as RGB (panopticapi's ``id2rgb``: id =
                      R + 256·G + 256²·B, 0 = no segment) and ``<name>_panoptic.json``:
                      ``{"image_id", "file_name", "segments_info": [{"id", "category_id",
                      "category_name", "isthing", "area"}]}``, as in a COCO panoptic predictions file
"instances"           ``<name>_instances.json``: a COCO results list, one ``{"image_id",
                      "category_id", "bbox" (XYWH), "score", "segmentation" (compressed RLE)}`` per
                      instance
"sem_seg"             ``<name>_sem_seg.png``: the argmax class per pixel (8-bit, 16-bit beyond 256
                      classes)
====================  ================================================================================

Category ids in the JSON files are the dataset's (e.g. COCO's 1..200) when the metadata has the
``*_dataset_id_to_contiguous_id`` maps, else the model's contiguous ids; PNG classes are always
contiguous ids.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from panopticapi.utils import id2rgb
from PIL import Image

__all__ = ["save_prediction"]


def _contiguous_to_dataset(metadata: Metadata, isthing: bool) -> Dict[int, int]:
    key = "thing_dataset_id_to_contiguous_id" if isthing else "stuff_dataset_id_to_contiguous_id"
    mapping = metadata.get(key, None) or {}
    return {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}


def _class_name(metadata: Metadata, contiguous_id: int, isthing: bool) -> Optional[str]:
    names = metadata.get("thing_classes" if isthing else "stuff_classes", None) or []
    return names[contiguous_id] if contiguous_id < len(names) else None


def save_prediction(prediction: Dict, stem: str, metadata: Metadata, image_id=None) -> List[str]:
    """Write the prediction's panoptic, instance and semantic outputs next to ``stem``.

    Args:
        prediction: one image's output of the model (on any device).
        stem: path prefix of the files, e.g. ``out/000123``; its directory is created.
        metadata: gives the dataset category ids and class names.
        image_id: written into the JSON files (default: the stem's base name).

    Returns:
        the paths written.
    """
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    image_id = os.path.basename(stem) if image_id is None else image_id
    written = []

    if "panoptic_seg" in prediction:
        panoptic_seg, segments_info = prediction["panoptic_seg"]
        ids = panoptic_seg.cpu().numpy().astype(np.int64)
        png = f"{stem}_panoptic.png"
        Image.fromarray(id2rgb(ids)).save(png)
        segments = []
        for segment in segments_info:
            isthing = bool(segment["isthing"])
            contiguous = int(segment["category_id"])
            segments.append(
                {
                    "id": int(segment["id"]),
                    "category_id": _contiguous_to_dataset(metadata, isthing).get(contiguous, contiguous),
                    "category_name": _class_name(metadata, contiguous, isthing),
                    "isthing": isthing,
                    "area": int((ids == segment["id"]).sum()),
                }
            )
        path = f"{stem}_panoptic.json"
        with open(path, "w") as f:
            json.dump({"image_id": image_id, "file_name": os.path.basename(png), "segments_info": segments}, f)
        written += [png, path]

    if "instances" in prediction:
        results = instances_to_coco_json(prediction["instances"].to("cpu"), image_id)
        to_dataset = _contiguous_to_dataset(metadata, isthing=True)
        for result in results:
            result["category_id"] = to_dataset.get(result["category_id"], result["category_id"])
        path = f"{stem}_instances.json"
        with open(path, "w") as f:
            json.dump(results, f)
        written.append(path)

    if "sem_seg" in prediction:
        classes = prediction["sem_seg"].argmax(0).cpu().numpy()
        dtype = np.uint8 if prediction["sem_seg"].shape[0] <= 256 else np.uint16
        path = f"{stem}_sem_seg.png"
        Image.fromarray(classes.astype(dtype)).save(path)
        written.append(path)
    return written

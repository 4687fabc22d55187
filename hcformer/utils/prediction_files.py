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

The files are written by :func:`hcformer_deploy.prediction_files.save_prediction`, the writer
of exported models' predictions too: this module only turns the model's detectron2 output and
metadata into that writer's plain input, so both kinds of model write the same files.
"""
from typing import Dict, List

from detectron2.data import Metadata

from hcformer_deploy.prediction_files import save_prediction as save_plain_prediction

__all__ = ["metadata_classes", "save_prediction"]


def metadata_classes(metadata: Metadata) -> Dict:
    """The class names and dataset category ids of ``metadata`` as plain JSON data: what an
    export's ``export.json`` holds under "classes" and the prediction files read."""
    classes = {key: list(metadata.get(key, None) or []) for key in ("thing_classes", "stuff_classes")}
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        mapping = metadata.get(key, None) or {}
        classes[key] = {str(dataset_id): int(contiguous) for dataset_id, contiguous in mapping.items()}
    return classes


def save_prediction(prediction: Dict, stem: str, metadata: Metadata) -> List[str]:
    """Write the prediction's panoptic, instance and semantic outputs next to ``stem``.

    Args:
        prediction: one image's output of the model (on any device).
        stem: path prefix of the files, e.g. ``out/000123``; its directory is created, and its
            base name is the image id of the JSON files.
        metadata: gives the dataset category ids and class names.

    Returns:
        the paths written.
    """
    plain = dict(prediction)
    if "instances" in prediction:
        instances = prediction["instances"].to("cpu")
        plain["instances"] = {
            "pred_boxes": instances.pred_boxes.tensor,
            "pred_masks": instances.pred_masks,
            "pred_classes": instances.pred_classes,
            "scores": instances.scores,
        }
    return save_plain_prediction(plain, stem, metadata_classes(metadata))

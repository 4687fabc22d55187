"""What an export directory holds and what its graph computes: shared by the exporter and the runner.

An export directory (``tools/export_model.py --output DIR``) holds the model file and
``export.json``, which describes it:

- the graph takes one input, ``image``: float32 (1, 3, H, W), RGB, 0–255 (normalisation is
  inside the graph). H and W are the export's size, multiples of ``size_divisibility``; a
  ``dynamic`` export takes any H, W and pads inside the graph as the eager model does;
- it returns ``pred_logits`` (1, Q, K+1) class logits ("no object" last), ``pred_masks``
  (1, Q, H_pad / s, W_pad / s) mask logits decoded through the hierarchy to its finest grid
  (s = ``mask_stride``: 4 with every clustering level, 32 for a level-0 model; H_pad, W_pad: H,
  W rounded up to ``size_divisibility``), ``sem_seg`` (1, K, H, W) per-class probabilities as
  the eager model's "sem_seg" for an output of size H×W, and, when exported with
  ``--clusterings``, ``level<k>`` (1, H, W) int64 hard cluster ids of every hierarchy level;
- the rest of export.json is what post-processing and the prediction files need (thresholds,
  thing classes, class names, dataset category ids) and where the export came from.
"""
import json
import os
from typing import Dict, List

__all__ = [
    "INPUT_NAME", "OUTPUT_NAMES", "MODEL_FILES", "INFO_FILE", "FORMATS", "level_output_names", "read_export_info",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("pred_logits", "pred_masks", "sem_seg")
FORMATS = ("onnx", "torchscript")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
INFO_FILE = "export.json"

# keys of export.json the runner reads, with what each must be
_REQUIRED = {
    "format": str,
    "model_file": str,
    "outputs": list,
    "input": dict,
    "mask_stride": int,
    "tasks": dict,
    "postprocess": dict,
    "classes": dict,
}
_REQUIRED_INPUT = {"height": int, "width": int, "dynamic": bool, "size_divisibility": int,
                   "min_size_test": int, "max_size_test": int}
_REQUIRED_POSTPROCESS = {"num_classes": int, "num_queries": int, "object_mask_threshold": float,
                         "overlap_threshold": float, "top_k": int, "thing_ids": list,
                         "resize_masks_first": bool}


def level_output_names(num_levels: int) -> List[str]:
    """Names of the hard cluster maps of hierarchy levels 0..num_levels."""
    return [f"level{k}" for k in range(num_levels + 1)]


def _check_keys(content: Dict, expected: Dict[str, type], where: str, path: str) -> None:
    for key, kind in expected.items():
        if key not in content:
            raise ValueError(f"{path}: {where}{key} is missing")
        value = content[key]
        # an int is an acceptable float (json writes 0.5 but also 1 for 1.0)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
            isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
        if not ok:
            raise ValueError(f"{path}: {where}{key} is {value!r}, expected a {kind.__name__}")


def read_export_info(directory: str) -> Dict:
    """The checked content of ``directory/export.json``, ``model_path`` added.

    Raises:
        FileNotFoundError: the directory, export.json or the model file it names is missing.
        ValueError: export.json is not JSON, lacks a key, or a key has the wrong type or value.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--exported {directory}: no such directory (make one with tools/export_model.py)")
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; {directory} is not an export directory of tools/export_model.py")
    try:
        with open(path) as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(info).__name__}")
    _check_keys(info, _REQUIRED, "", path)
    _check_keys(info["input"], _REQUIRED_INPUT, "input.", path)
    _check_keys(info["postprocess"], _REQUIRED_POSTPROCESS, "postprocess.", path)
    if info["format"] not in FORMATS:
        raise ValueError(f"{path}: format is {info['format']!r}, expected one of {', '.join(FORMATS)}")
    missing = [name for name in OUTPUT_NAMES if name not in info["outputs"]]
    if missing:
        raise ValueError(f"{path}: outputs lacks {', '.join(missing)}")
    model_path = os.path.join(directory, info["model_file"])
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"{path} names the model file {info['model_file']}, which is not in {directory}")
    return {**info, "model_path": model_path}

"""Export a config's model to ONNX or TorchScript, with the export.json that describes it.

What the graph computes and what export.json holds is ``hcformer_deploy.contract``; the graph
itself is ``hcformer.modeling.export_graph.ExportGraph``. Both formats are traced from one run
of the model on a random image of the export size, with the local clustering primitive on its
"reference" backend (plain slicing, multiply-adds and sums, which every exporter knows) and
DCNv2 as ONNX's ``DeformConv`` (``hcformer.layers.deform_conv_onnx``). After writing, the
exported file is loaded back, run on that image, and compared with the eager graph.
"""
import json
import logging
import os
import re
import time
import traceback
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import nn

import hcformer
from hcformer.layers.deform_conv_onnx import DEFORM_CONV_OPSET, register_deform_conv_symbolic
from hcformer.layers.local_clustering import use_backend
from hcformer.modeling.export_graph import ExportGraph
from hcformer_deploy.contract import FORMATS, INFO_FILE, INPUT_NAME, MODEL_FILES, OUTPUT_NAMES, level_output_names
from hcformer_deploy.exported_model import open_model_file

from .inference_model import build_inference_model

__all__ = ["ExportError", "export_model", "export_size"]

logger = logging.getLogger(__name__)

OPSET = DEFORM_CONV_OPSET
# largest difference to the eager model accepted by the check after exporting (fp32 rounding
# of a different operator order stays near 1e-6; a wrongly traced size gives O(1) differences)
CHECK_TOLERANCE = 1e-3
_TORCH_DIR = os.path.dirname(torch.__file__)


class ExportError(RuntimeError):
    """The model (or the requested export) cannot be exported; the message says what and why."""


def export_size(cfg: CfgNode, size_divisibility: int, height: Optional[int], width: Optional[int],
                dynamic: bool) -> tuple:
    """(H, W) of the export: the given sides, or INPUT.MIN_SIZE_TEST rounded up to the size
    divisibility. Without ``dynamic`` they must be multiples of the size divisibility."""
    default = -(-cfg.INPUT.MIN_SIZE_TEST // size_divisibility) * size_divisibility
    sides = {"--height": default if height is None else height, "--width": default if width is None else width}
    for flag, side in sides.items():
        if side < size_divisibility:
            raise ValueError(f"{flag} {side}: must be at least {size_divisibility}")
        if not dynamic and side % size_divisibility:
            raise ValueError(
                f"{flag} {side} is not a multiple of {size_divisibility} (the model's size divisibility): "
                f"give a multiple, or export with --dynamic to pad inside the graph"
            )
    return sides["--height"], sides["--width"]


def _not_exportable(error: Exception, fmt: str, dynamic: bool) -> ExportError:
    """One line naming the operation and the module that torch could not export."""
    text = str(error).strip()
    what = re.sub(r"\s*Please feel free to request support.*", "", text.splitlines()[0] if text else type(error).__name__)
    # torch's message names the value the operation read (often made by the module before);
    # the exception it chains from names the node that failed, in the module that holds it
    scopes = []
    cause = error
    while cause is not None:
        scopes = re.findall(r"scope: ([^\s#]+)", str(cause)) or scopes
        cause = cause.__cause__ or cause.__context__
    if scopes:
        where = f" (in {scopes[0].split('/')[-1]})"
    else:  # Python code of the model that cannot take a traced value (a TypeError): its line
        frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
        where = f" (in {os.path.relpath(frames[-1].filename)}:{frames[-1].lineno}, {frames[-1].name})" if frames else ""
    mode = " with --dynamic" if dynamic else ""
    return ExportError(f"the model cannot be exported to {fmt}{mode}: {what}{where}")


def _trace(graph: nn.Module, example: torch.Tensor, fmt: str, path: str, dynamic: bool, output_names: Sequence[str]):
    with torch.no_grad(), use_backend("reference"), warnings.catch_warnings():
        # The size checks of the model (Python conditions on shapes) become constants in a
        # trace, and the tracer says so for each; the check after the export runs the file.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            traced.save(path)
            return
        register_deform_conv_symbolic()
        # The TorchScript-based exporter: it keeps the sizes that follow the input's symbolic
        # (dynamic axes) and exports HCFormer in seconds; the dynamo-based one writes the same
        # operators but takes minutes for the reference clustering's slices.
        axes = {INPUT_NAME: {2: "height", 3: "width"}} if dynamic else None
        torch.onnx.export(
            graph, (example,), path, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=list(output_names), dynamic_axes=axes, verbose=False,
        )


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _difference(got: np.ndarray, wanted: np.ndarray) -> float:
    """Largest absolute difference; for hard cluster ids, the share of pixels that differ."""
    if got.shape != wanted.shape:
        return float("inf")
    if np.issubdtype(wanted.dtype, np.integer):
        return float((got != wanted).mean())
    return float(np.abs(got.astype(np.float64) - wanted).max())


def _classes(cfg: CfgNode) -> Dict:
    """Class names and dataset category ids, as the demo's prediction files use them."""
    # the demo's choice of metadata (hcformer.utils imports detectron2's Visualizer: only here)
    from hcformer.utils.hierarchy_visualization import visualization_metadata
    from hcformer.utils.prediction_files import metadata_classes

    return metadata_classes(visualization_metadata(cfg))


def export_model(
    cfg: CfgNode,
    fmt: str,
    output_dir: str,
    height: Optional[int] = None,
    width: Optional[int] = None,
    dynamic: bool = False,
    clusterings: bool = False,
    config_file: str = "",
    seed: int = 0,
) -> Dict:
    """Write ``output_dir/model.onnx`` (or ``model.ts``) and ``output_dir/export.json``.

    Args:
        cfg: an inference config (``inference_cfg``); MODEL.WEIGHTS is loaded, none means
            random weights (with a warning).
        fmt: "onnx" or "torchscript".
        height, width: the size traced (and, without ``dynamic``, the only size accepted);
            default INPUT.MIN_SIZE_TEST rounded up to the size divisibility, square.
        dynamic: accept any size, padding inside the graph.
        clusterings: also output the hard cluster map of every hierarchy level.
        seed: of the random image traced and checked.

    Returns:
        the content of export.json.

    Raises:
        ValueError: an unsupported format or size. FileNotFoundError: MODEL.WEIGHTS names no
        file. ExportError: the model holds something the format cannot express.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not supported: choose one of {', '.join(FORMATS)}")
    start = time.perf_counter()
    model = build_inference_model(cfg).to("cpu")
    size_divisibility = max(model.size_divisibility, 1)
    height, width = export_size(cfg, size_divisibility, height, width, dynamic)
    # a backbone that knows what no trace of it can hold says so (e.g. CAST's superpixels)
    problem = model.backbone.export_problem(dynamic) if hasattr(model.backbone, "export_problem") else None
    if problem:
        raise ExportError(f"the model cannot be exported to {fmt}{' with --dynamic' if dynamic else ''}: "
                          f"{type(model.backbone).__name__}: {problem}")
    graph = ExportGraph(model, cfg.INPUT.FORMAT, pad=dynamic, clusterings=clusterings).eval()

    # A trace records one run: the file is also checked on another image, which catches a value
    # the trace froze from the traced image's content, and a dynamic export at a size it was
    # not traced at, padded differently, which catches a size frozen into a constant.
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand((1, 3, height, width), generator=generator) * 255
    checks = {f"{height}x{width}": example}
    if dynamic:
        other = (height + size_divisibility // 2 + 1, width + 3)
        checks[f"{other[0]}x{other[1]}"] = torch.rand((1, 3) + other, generator=generator) * 255
    else:
        checks[f"{height}x{width}, another image"] = torch.rand((1, 3, height, width), generator=generator) * 255
    with torch.no_grad(), use_backend("reference"):
        eager = {size: [t.numpy() for t in graph(image)] for size, image in checks.items()}
    expected = eager[f"{height}x{width}"]
    padded_height = -(-height // size_divisibility) * size_divisibility
    mask_stride = padded_height // expected[1].shape[-2]  # 4, or 32 for a level-0 model
    output_names = list(OUTPUT_NAMES) + (level_output_names(len(expected) - len(OUTPUT_NAMES) - 1) if clusterings else [])

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MODEL_FILES[fmt])
    logger.info("Tracing %s at %dx%d%s into %s ...", type(model.backbone).__name__, height, width,
                " (dynamic size)" if dynamic else "", path)
    try:
        _trace(graph, example, fmt, path, dynamic, output_names)
    # RuntimeError: an operation the exporter lacks; TypeError: Python code of the model that
    # cannot take a traced size or value (e.g. round() of a traced size)
    except (RuntimeError, TypeError, torch.onnx.errors.OnnxExporterError) as error:
        _remove(path)  # no half-written file that looks like an export
        raise _not_exportable(error, fmt, dynamic) from error
    logger.info("Wrote %s (%.1f MB) in %.1f s; checking it against the eager model ...", path,
                os.path.getsize(path) / 2**20, time.perf_counter() - start)

    differences, run = {}, None
    for size, image in checks.items():
        try:
            run = run or open_model_file(path, fmt)  # loaded once for all the checks
            got = [t.numpy() for t in run(image.numpy())]
        except Exception as error:  # onnxruntime's and torch.jit's errors have no common base
            _remove(path)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExportError(
                f"the exported {fmt} model fails at {size}: {first_line[:300]}; the trace does not hold for this input"
            ) from error
        differences[size] = {name: _difference(a, b) for name, a, b in zip(output_names, got, eager[size])}
        logger.info("At %s, largest difference to the eager model: %s", size,
                    ", ".join(f"{name} {value:.2g}" for name, value in differences[size].items()))
        worst = max(differences[size], key=differences[size].get)
        if differences[size][worst] > CHECK_TOLERANCE:
            _remove(path)
            raise ExportError(
                f"the exported {fmt} model differs from the eager model at {size}: {worst} by "
                f"{differences[size][worst]:.3g} (more than {CHECK_TOLERANCE}); the trace does not hold for this input"
            )

    meta = model.metadata
    thing_map = (meta.get("thing_dataset_id_to_contiguous_id", None) or {}) if meta is not None else {}
    test = cfg.MODEL.MASK_FORMER.TEST
    info = {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "config_file": config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "input": {
            "name": INPUT_NAME, "height": height, "width": width, "dynamic": dynamic, "channels": "RGB",
            "range": [0, 255], "size_divisibility": size_divisibility,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        },
        "outputs": output_names,
        "mask_stride": mask_stride,
        "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
        "tasks": {"semantic": test.SEMANTIC_ON, "panoptic": test.PANOPTIC_ON, "instance": test.INSTANCE_ON},
        "postprocess": {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "num_queries": model.num_queries,
            "object_mask_threshold": model.object_mask_threshold,
            "overlap_threshold": model.overlap_threshold,
            "top_k": model.test_topk_per_image,
            "thing_ids": sorted(int(i) for i in thing_map.values()),
            "resize_masks_first": model.sem_seg_postprocess_before_inference,
        },
        "classes": _classes(cfg),
        "check": {"max_abs_difference": differences, "seed": seed},
        "opset": OPSET if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "hcformer_version": hcformer.__version__,
    }
    with open(os.path.join(output_dir, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    logger.info("Export done in %.1f s: %s", time.perf_counter() - start, output_dir)
    return info

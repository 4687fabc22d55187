"""Config files of the tiny test model for each task, and script loading, for the tools' tests.

Not a test module: imported by test_hierarchy_visualization.py and test_demo.py.
"""
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from detectron2.modeling import build_model

from conftest import tiny_hcformer_cfg

ROOT = Path(__file__).resolve().parents[1]

# MODEL.MASK_FORMER.TEST flags of the three kinds of configs in configs/
TASK_FLAGS = {
    "panoptic": {"PANOPTIC_ON": True, "INSTANCE_ON": True, "SEMANTIC_ON": True},
    "instance": {"PANOPTIC_ON": False, "INSTANCE_ON": True, "SEMANTIC_ON": False},
    "semantic": {"PANOPTIC_ON": False, "INSTANCE_ON": False, "SEMANTIC_ON": True},
}


def task_cfg(task: str, **overrides):
    """The tiny model for ``task``, fed small images (shortest edge 64) so that tests stay fast."""
    cfg = tiny_hcformer_cfg(**overrides)
    for flag, on in TASK_FLAGS[task].items():
        setattr(cfg.MODEL.MASK_FORMER.TEST, flag, on)
    cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_IMAGE = 5
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    return cfg


def make_confident(model: torch.nn.Module, label: int, probability: float) -> None:
    """Make every query predict class ``label`` with ``probability`` and a mask covering the
    whole image, whatever the input: the decoder's outputs become constants (zero weights, chosen
    biases). Panoptic inference then makes exactly one segment of score ``probability``."""
    predictor = model.sem_seg_head.predictor
    num_logits = predictor.class_embed.out_features  # K classes + "no object"
    probs = torch.full((num_logits,), (1 - probability) / (num_logits - 1))
    probs[label] = probability
    with torch.no_grad():
        for layer in (predictor.class_embed, predictor.mask_embed.layers[-1], predictor.mask_proj):
            layer.weight.zero_()
        predictor.class_embed.bias.copy_(probs.log())
        predictor.mask_embed.layers[-1].bias.fill_(1.0)  # mask logit = Σ_d 1 · 1 = mask dim > 0
        predictor.mask_proj.bias.fill_(1.0)


def write_task_config(
    directory: Path, task: str, with_weights: bool = False, confident: Optional[float] = None, **overrides
) -> Path:
    """A config file for ``task`` in ``directory``.

    Args:
        with_weights: MODEL.WEIGHTS points to a checkpoint of a seeded random model, so that
            two runs see the same model.
        confident: the checkpoint's model is made confident (:func:`make_confident`, class 1
            with this probability).
    """
    cfg = task_cfg(task, **overrides)
    if with_weights or confident is not None:
        torch.manual_seed(0)
        model = build_model(cfg)
        if confident is not None:
            make_confident(model, label=1, probability=confident)
        weights = directory / f"{task}_model.pth"
        torch.save({"model": model.state_dict()}, weights)
        cfg.MODEL.WEIGHTS = str(weights)
    path = directory / f"{task}.yaml"
    path.write_text(cfg.dump())
    return path


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository (e.g. "demo/demo.py") imported as a module, to call its main()."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

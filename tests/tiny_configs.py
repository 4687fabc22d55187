"""Config files of the tiny test model for each task, and script loading, for the tools' tests.

Not a test module: imported by conftest.py (the ``make_cfg`` fixture) and the tools' tests.
"""
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from detectron2.modeling import build_model

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = ROOT / "configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"
# Overrides that shrink SHAPES_CONFIG for `train_net.py` runs in tests (64 px, a small head).
TINY_SHAPES_OVERRIDES = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "INPUT.RANDOM_FLIP", "none",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "64", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "TEST.HIERARCHY_EVAL", "False",
]


def tiny_hcformer_cfg(**overrides):
    """A small HCFormer config (ResNet-18, few queries) for fast CPU tests."""
    from detectron2.config import get_cfg

    from hcformer import add_hcformer_config

    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "HCFormer"
    cfg.MODEL.BACKBONE.NAME = "D2HCResNet"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.SEM_SEG_HEAD.NAME = "HCFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 6
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 64
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 128
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 64
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ()
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg

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
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
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

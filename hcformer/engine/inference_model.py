"""A model ready for inference from a config file: what the demo and the tools start with."""
import logging
from typing import List, Optional

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from torch import nn

from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.config import add_hcformer_config

from .config_validation import merge_config_file, merge_config_list, validate_config
from .cpu_allocator import keep_freed_memory
from .projects import import_project_of
from .setup import adapt_to_machine

__all__ = ["inference_cfg", "build_inference_model"]

logger = logging.getLogger(__name__)


def inference_cfg(
    config_file: str, opts: Optional[List[str]] = None, freeze: bool = True, project: Optional[str] = None
) -> CfgNode:
    """The config of ``config_file`` with ``opts`` overrides, on the CPU when CUDA is missing;
    the config's project (or ``project``, a directory) is imported first (``engine.projects``).
    On the CPU, malloc is told to keep freed tensor memory (``engine.cpu_allocator``).

    Unlike :func:`hcformer.engine.setup`, it does not set up an output directory or log files:
    a demo should not write anything it was not asked to.
    """
    module = import_project_of(config_file, project)
    if module is not None:
        logger.info("Imported the project %s", module.__name__)
    cfg = get_cfg()
    add_hcformer_config(cfg)
    merge_config_file(cfg, config_file)
    merge_config_list(cfg, opts or [])
    resolved = validate_config(cfg)  # also registers the DATASETS.COCO_* / SEM_SEG datasets
    for note in resolved + adapt_to_machine(cfg):
        logger.info(note)
    allocator = keep_freed_memory() if cfg.MODEL.DEVICE == "cpu" else None
    if allocator:
        logger.info(allocator)
    if freeze:
        cfg.freeze()
    return cfg


def build_inference_model(cfg: CfgNode) -> nn.Module:
    """The config's model in eval mode with MODEL.WEIGHTS loaded (local files only).

    An empty MODEL.WEIGHTS leaves the model randomly initialised, with a warning: the pictures
    of such a model show the machinery working, not what it learns.
    """
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        HCFormerCheckpointer(model, allow_pickle=cfg.MODEL.ALLOW_PICKLE).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model is randomly initialised")
    return model.eval()

"""A model ready for inference from a config file: what the demo and the tools start with."""
import logging
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from hcformer.checkpoint import HCFormerCheckpointer

from .setup import read_config

__all__ = ["inference_cfg", "build_inference_model"]

logger = logging.getLogger(__name__)


def inference_cfg(
    config_file: str, opts: Optional[List[str]] = None, freeze: bool = True, project: Optional[str] = None
) -> CfgNode:
    """The config of ``config_file`` with ``opts`` overrides (:func:`~.setup.read_config`: the
    project imported, on the CPU when CUDA is missing), its lines logged.

    Unlike :func:`hcformer.engine.setup`, it does not set up an output directory or log files:
    a demo should not write anything it was not asked to.
    """
    cfg, lines, notes = read_config(config_file, opts or [], project)
    for line in lines + notes:
        logger.info(line)
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

"""The config of a command-line run: file + overrides, adjusted to the machine, logged."""
import argparse
import logging
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hcformer.config import add_hcformer_config

from .config_validation import merge_config_file, merge_config_list, validate_config
from .cpu_allocator import keep_freed_memory
from .projects import import_project_of
from .output_dir import take_output_dir

logger = logging.getLogger(__name__)


def adapt_to_machine(cfg: CfgNode, cuda_available: Optional[bool] = None) -> List[str]:
    """Without CUDA, run on the CPU and without AMP (detectron2 v0.6's AMPTrainer asserts CUDA).

    Changes ``cfg`` in place and returns one message per change, to be logged.
    ``cuda_available`` defaults to what torch sees on this machine.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    notes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not cuda_available:
        cfg.MODEL.DEVICE = "cpu"
        notes.append("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.SOLVER.AMP.ENABLED = False
        notes.append("AMP needs CUDA here: training in fp32 (SOLVER.AMP.ENABLED False).")
    return notes


def read_config(config_file: str, opts: Sequence[str], project: Optional[str] = None) -> Tuple[CfgNode, List[str], List[str]]:
    """The unfrozen config of ``config_file`` with ``opts`` (KEY VALUE ...) merged, checked and
    adapted to the machine; what every entry point starts from.

    The config's project (or ``project``, a directory) is imported first (``engine.projects``:
    its keys and models), and ``validate_config`` registers the DATASETS.COCO_* / SEM_SEG
    datasets. On the CPU, malloc is told to keep freed tensor memory (``engine.cpu_allocator``).

    Returns:
        (cfg, lines to log as information, notes on what was changed to log as warnings): the
        caller logs them once its loggers are set up.

    Raises:
        UnknownConfigKeyError: a key of the file or the overrides does not exist (the
            message names the nearest ones).
        ConfigError: see :func:`~hcformer.engine.config_validation.validate_config`.
    """
    module = import_project_of(config_file, project)
    cfg = get_cfg()
    add_hcformer_config(cfg)
    merge_config_file(cfg, config_file)
    merge_config_list(cfg, opts)
    lines = [f"Imported the project {module.__name__}"] if module is not None else []
    lines += validate_config(cfg)
    notes = adapt_to_machine(cfg)
    allocator = keep_freed_memory() if cfg.MODEL.DEVICE == "cpu" else None
    return cfg, lines + ([allocator] if allocator else []), notes


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``args`` (from detectron2's ``default_argument_parser``, read by
    :func:`read_config`); sets up the output directory and the "detectron2" and "hcformer"
    loggers.

    A training owns OUTPUT_DIR from here until the process ends; ``--eval-only`` runs in a
    directory of its own, ``OUTPUT_DIR/eval_<checkpoint>``, which becomes the config's OUTPUT_DIR
    (see :mod:`hcformer.engine.output_dir`). Nothing is written before that.

    Raises:
        UnknownConfigKeyError, ConfigError: see :func:`read_config`.
        OutputDirInUseError: another run owns the output directory.
    """
    cfg, lines, notes = read_config(args.config_file, args.opts, getattr(args, "project", None))
    owned = take_output_dir(cfg, getattr(args, "eval_only", False), getattr(args, "resume", False))
    cfg.freeze()
    default_setup(cfg, args)  # also saves the final config to OUTPUT_DIR/config.yaml
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="hcformer")
    for line in lines + owned:
        logger.info(line)
    for note in notes:
        logger.warning(note)
    return cfg

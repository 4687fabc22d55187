#!/usr/bin/env python
"""``tools/visualize_hierarchy.py`` for CAST configs (same arguments, same panels and JSON).

The repository's tool reads configs with HCFormer's keys only; this wrapper registers CAST and
reads the config with MODEL.CAST.* added, then runs the tool unchanged. Levels of a CAST
hierarchy: 0 the stride-8 cells, 1 the superpixels, 1 + k the segments after k graph poolings.

    python projects/CAST/tools/visualize_cast_hierarchy.py \\
        --config-file projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml \\
        --dataset shapes_val_panoptic_with_sem_seg --output out/cast_hierarchy MODEL.WEIGHTS model.pth
"""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

PROJECT_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PROJECT_DIR.parents[1]
sys.path.insert(0, str(PROJECT_DIR))

import cast  # noqa: E402  registers D2HCCAST, CASTFormerHead, CASTTransformerDecoder


def load_tool() -> ModuleType:
    """The repository's tools/visualize_hierarchy.py as a module."""
    spec = importlib.util.spec_from_file_location("visualize_hierarchy", REPO_DIR / "tools" / "visualize_hierarchy.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def main(argv: Optional[List[str]] = None) -> Dict:
    return load_tool().main(argv)  # importing cast registered MODEL.CAST.*


if __name__ == "__main__":
    main(sys.argv[1:])

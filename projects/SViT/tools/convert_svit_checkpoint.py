#!/usr/bin/env python
"""Convert a released ImageNet SViT ("STViT") checkpoint to this project's names.

The input is a local file of the authors' release: a training checkpoint ``{"model": {...},
...}`` or a bare state dict, read with ``torch.load(weights_only=True)``. Keys are renamed (see
``svit/checkpoint.py``), the constant unfold / fold kernels and BatchNorm counters dropped, and
the result checked key by key against an SViT of the architecture read from the tensors: a report
of matched / missing / unexpected keys is printed, and nothing is written if a key does not fit.

    # backbone weights for MODEL.WEIGHTS of an HCFormer with D2HCSViT / D2SViT
    python projects/SViT/tools/convert_svit_checkpoint.py stvit_small.pth svit_small.pkl
    # the whole classifier (svit.SViTClassifier), e.g. to check its ImageNet accuracy
    python projects/SViT/tools/convert_svit_checkpoint.py stvit_small.pth svit_small_cls.pth --classifier

The output is a detectron2-style ``.pkl`` (numpy arrays) or, for any other suffix, a ``.pth``
holding ``{"model": {...}}``. Backbone keys get the ``backbone.`` prefix of an HCFormer model; the
clustering layers of HC-SViT are not in an ImageNet model and start from their initialisation.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the svit package

from hcformer.checkpoint import LoadReport, write_backbone_weights  # noqa: E402
from svit import SViT, SViTClassifier  # noqa: E402
from svit.checkpoint import (  # noqa: E402
    convert_released_state_dict,
    is_released_svit,
    read_released_checkpoint,
    released_architecture,
)


def _expected_missing(key: str) -> bool:
    # clustering layers: not part of an ImageNet model; BN counters: dropped on purpose
    return ".clustering." in key or key.endswith("num_batches_tracked")


def convert(
    path: Path, classifier: bool = False
) -> Tuple[Dict[str, torch.Tensor], Dict[str, object], LoadReport, List[str]]:
    """(converted state dict, MODEL.SVIT.* of its architecture, its fit to our model, dropped keys)."""
    state = read_released_checkpoint(path)
    if not is_released_svit(state.keys()):
        raise ValueError(f"{path} is not a released SViT checkpoint (no patch_embed.proj.0.weight, stoken_refine)")
    arch = released_architecture(state)
    prefix = "" if classifier else "backbone."
    converted, dropped = convert_released_state_dict(state, classifier=classifier, prefix=prefix)
    # heads do not change any tensor shape: one head per stage builds an unknown architecture
    heads = arch["NUM_HEADS"] or [1, 1, 1, 1]
    kwargs = dict(
        embed_dims=arch["EMBED_DIMS"], depths=arch["DEPTHS"], num_heads=heads, layer_scale=arch["LAYER_SCALE"]
    )
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = SViTClassifier(**kwargs) if classifier else SViT(level=3, **kwargs)
    expected = {prefix + k: v for k, v in model.state_dict().items()}
    return converted, arch, LoadReport.compare(converted, expected), dropped


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="released checkpoint (local file)")
    parser.add_argument("output", type=Path, help=".pkl (detectron2 style) or .pth")
    parser.add_argument("--classifier", action="store_true", help="keep the head, no backbone. prefix")
    args = parser.parse_args(argv)

    converted, arch, report, dropped = convert(args.input, args.classifier)
    print(report.format(expected_missing=_expected_missing))
    print(f"left out of the file: {len(dropped)} (constant unfold/fold kernels, BN counters"
          f"{'' if args.classifier else ', classifier head'})")
    print("architecture (MODEL.SVIT.*):")
    for key, value in arch.items():
        note = "  # not in the weights: set it by hand (unknown variant)" if value is None else ""
        print(f"    {key}: {value}{note}")
    if not report.ok(expected_missing=_expected_missing):
        print("not written: some keys do not fit", file=sys.stderr)
        return 1
    write_backbone_weights(converted, args.output, author="svit (released STViT ImageNet weights)")
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

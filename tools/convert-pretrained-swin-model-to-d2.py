#!/usr/bin/env python
"""Convert an ImageNet Swin Transformer checkpoint into HC-Swin backbone weights.

The input is a local file of the official Swin release (``{"model": {...}}`` with
``patch_embed.*``, ``layers.{i}.blocks.*``, ``layers.{i}.downsample.*``, ``norm.*``,
``head.*``), a timm ``SwinTransformer`` state dict, or Mask2Former's converted ``.pkl``. The
classifier and the attention-mask buffers are dropped, the final ``norm`` becomes ``norm3``,
and every key gets the ``backbone.`` prefix of an HCFormer model. The architecture
(MODEL.SWIN.*) is read from the tensors, the weights are checked against an HC-Swin of that
architecture, and a report of matched / missing / unexpected keys is printed; nothing is
written if a key does not fit. The clustering layers are not part of an ImageNet model: they
start from their initialisation.

    python tools/convert-pretrained-swin-model-to-d2.py swin_small_patch4_window7_224.pth \\
        swin_small_patch4_window7_224_hc.pth
    # then: MODEL.WEIGHTS swin_small_patch4_window7_224_hc.pth

The output is a ``.pth`` holding ``{"model": {...}}`` or, for a ``.pkl`` name, a
detectron2-style pickle of numpy arrays, which training reads only with MODEL.ALLOW_PICKLE True
(or HCFORMER_ALLOW_PICKLE=1). A ``.pkl`` input (Mask2Former's) is unpickled, which can run
code: convert only files you trust, once, to a weights-only ``.pth``. MODEL.WEIGHTS also accepts the input file itself (the
checkpointer converts it the same way); the tool makes the conversion explicit and checked.
Checkpoints of the original HCFormer (e.g. its released HCFormer+ Swin-L) need no
conversion: their keys are already this project's.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from hcformer.checkpoint import (
    LoadReport,
    convert_swin_state_dict,
    is_imagenet_swin,
    read_state_dict,
    swin_architecture,
    weights_hint,
    write_backbone_weights,
)
from hcformer.modeling.backbone.swin import HCSwin


def convert(state: Mapping[str, object]) -> Tuple[Dict[str, torch.Tensor], Dict[str, object], LoadReport]:
    """(HC-Swin state dict, MODEL.SWIN.* of its architecture, its fit to an HC-Swin)."""
    converted = convert_swin_state_dict(state)
    arch = swin_architecture({k[len("backbone.") :]: v for k, v in converted.items()})
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = HCSwin(
            embed_dim=arch["EMBED_DIM"],
            depths=arch["DEPTHS"],
            num_heads=arch["NUM_HEADS"],
            window_size=arch["WINDOW_SIZE"],
            mlp_ratio=arch["MLP_RATIO"],
            qkv_bias=arch["QKV_BIAS"],
            patch_size=arch["PATCH_SIZE"],
            ape=arch["APE"],
            patch_norm=arch["PATCH_NORM"],
            level=3,
        )
    expected = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    return converted, arch, LoadReport.compare(converted, expected)


def is_clustering_key(key: str) -> bool:
    return ".clustering." in key


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="official or timm Swin checkpoint (.pth), or Mask2Former's .pkl")
    parser.add_argument("output", type=Path, help="HC-Swin weights to write: .pkl (detectron2 style) or .pth")
    args = parser.parse_args(argv)

    try:
        state = read_state_dict(args.input)
    except (FileNotFoundError, ValueError) as e:  # the messages name the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not is_imagenet_swin(state.keys()):
        print(
            f"error: {args.input} is not an ImageNet Swin Transformer checkpoint: expected patch_embed.proj.weight "
            f"and layers.*.blocks.* keys, found {sorted(state)[:4]} ...",
            file=sys.stderr,
        )
        return 2
    try:
        converted, arch, report = convert(state)
    except (KeyError, ValueError) as e:  # Swin-like names, but not a 4-stage Swin (v1) of the official design
        detail = f"no tensor {e}" if isinstance(e, KeyError) else str(e)
        print(
            f"error: {args.input} is not a usable ImageNet Swin Transformer checkpoint: {detail}. Expected the "
            "official Swin (v1) or timm's SwinTransformer: 4 stages (layers.0-3.blocks.*) with relative position "
            f"bias tables; {args.output} not written",
            file=sys.stderr,
        )
        return 2
    print(f"{args.input}: Swin with " + ", ".join(f"{k} {v}" for k, v in arch.items()))
    print(report.format(expected_missing=is_clustering_key))
    if not report.ok(expected_missing=is_clustering_key):
        print(f"error: the weights do not fit an HC-Swin; {args.output} not written", file=sys.stderr)
        return 1
    write_backbone_weights(converted, args.output, author=f"convert-pretrained-swin-model-to-d2.py ({args.input.name})")
    print(f"wrote {len(converted)} tensors to {args.output}")
    print(weights_hint(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Convert an ImageNet ResNet (torchvision ``.pth`` or detectron2 ``.pkl``) into HC-ResNet weights.

The classifier ``fc`` and the BN batch counters are dropped and the keys renamed to the
HC-ResNet (torchvision) layout under ``backbone.``: ``backbone.stem.{0,1}``,
``backbone.layer{1-4}.{i}.{conv,bn}{1,2,3}``, ``backbone.layer{k}.0.downsample.{0,1}``. The depth
is read from the blocks; the weights are checked against an HC-ResNet of that depth with plain
strided convolutions, and a report of matched / missing / unexpected keys is printed; nothing
is written if a key does not fit. With MODEL.RESNETS.DOWNSAMPLING "deform" the checkpointer
moves the strided convs' weights into the deformable convs when it loads the file; the
clustering layers and the deformable offsets start from their initialisation.

    python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth R-50.pth
    # then: MODEL.WEIGHTS R-50.pth

This tool is also the way to turn a detectron2 model-zoo ``.pkl`` (e.g. R-50.pkl) into a
weights-only ``.pth`` once: it unpickles its input, which can run code, so use it only on files
you trust. Training and evaluation read ``.pkl`` files only with MODEL.ALLOW_PICKLE True (or
HCFORMER_ALLOW_PICKLE=1); a ``.pkl`` output of this tool needs that flag too.

Loading the torchvision file directly with MODEL.WEIGHTS works as well (the checkpointer
converts it on the fly); this tool makes the conversion explicit and checkable.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from hcformer.checkpoint import (
    LoadReport,
    convert_resnet_state_dict,
    is_imagenet_resnet,
    read_state_dict,
    weights_hint,
    write_backbone_weights,
)
from hcformer.modeling.backbone.resnet import RESNET_SPECS, HCResNet


def resnet_depth(state: Mapping[str, torch.Tensor]) -> int:
    """The depth (18 ... 152) whose block counts and block type match a converted state dict."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"^backbone\.layer(\d)\.(\d+)\.", key)
        if m:
            blocks[int(m[1]) - 1] = max(blocks[int(m[1]) - 1], int(m[2]) + 1)
    block_type = "bottleneck" if "backbone.layer1.0.conv3.weight" in state else "basic"
    for depth, spec in RESNET_SPECS.items():
        if spec == (block_type, tuple(blocks)):
            return depth
    raise ValueError(f"{block_type} blocks {blocks} per stage match no ResNet depth {sorted(RESNET_SPECS)}")


def convert(state: Mapping[str, object]) -> Tuple[Dict[str, torch.Tensor], int, LoadReport]:
    """(HC-ResNet state dict, its depth, its fit to an HC-ResNet with plain strided convs)."""
    converted = convert_resnet_state_dict(state)
    depth = resnet_depth(converted)
    with torch.device("meta"):  # shapes only
        model = HCResNet(depth=depth, level=3, downsampling="conv", norm="FrozenBN")
    expected = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    return converted, depth, LoadReport.compare(converted, expected)


def is_clustering_key(key: str) -> bool:
    return key.startswith("backbone.clustering_layers.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="torchvision ResNet (.pth) or detectron2 ImageNet ResNet (.pkl)")
    parser.add_argument("output", type=Path, help="HC-ResNet weights: .pkl (detectron2 style) or .pth")
    args = parser.parse_args(argv)

    try:
        state = read_state_dict(args.input)
        if not is_imagenet_resnet(state.keys()):
            raise ValueError(
                f"{args.input} is not an ImageNet ResNet checkpoint: expected torchvision (conv1.weight, "
                f"layer1.0.conv1.weight) or detectron2 (stem.conv1.weight) keys, found {sorted(state)[:4]} ..."
            )
    except (FileNotFoundError, ValueError) as e:  # the messages name the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        converted, depth, report = convert(state)
    except (KeyError, ValueError) as e:  # ResNet-like names, but no ResNet of a known depth
        detail = f"no tensor {e}" if isinstance(e, KeyError) else str(e)
        print(
            f"error: {args.input} is not a usable ImageNet ResNet checkpoint: {detail}. Expected a torchvision "
            f"or detectron2 ResNet-{'/'.join(map(str, sorted(RESNET_SPECS)))}; {args.output} not written",
            file=sys.stderr,
        )
        return 2
    print(f"{args.input}: ResNet-{depth}")
    print(report.format(expected_missing=is_clustering_key))
    if not report.ok(expected_missing=is_clustering_key):
        print(f"error: the weights do not fit an HC-ResNet-{depth}; {args.output} not written", file=sys.stderr)
        return 1
    write_backbone_weights(converted, args.output, author=f"convert-torchvision-to-d2.py ({args.input.name})")
    print(f"wrote {len(converted)} tensors to {args.output}")
    print(weights_hint(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())

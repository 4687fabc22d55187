"""ImageNet ResNet weights (torchvision ``.pth`` or detectron2 ``.pkl`` layout) → HC-ResNet names."""
import re
from typing import Dict, Iterable, Mapping

import numpy as np
import torch

# detectron2's converted torchvision ResNets: stem.conv1 / resN.i.convK[.norm] / shortcut
_D2_RULES = [
    (r"^stem\.conv1\.norm\.", "stem.1."),
    (r"^stem\.conv1\.", "stem.0."),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
    (r"^res(\d)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}."),
]
# torchvision: conv1 / bn1 at the top level are the stem; fc is the classifier
_TV_RULES = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1.")]


def is_imagenet_resnet(keys: Iterable[str]) -> bool:
    """Whether a state dict is a bare ImageNet ResNet (torchvision or detectron2 names)."""
    keys = set(keys)
    return "conv1.weight" in keys and "layer1.0.conv1.weight" in keys or "stem.conv1.weight" in keys


def convert_resnet_state_dict(state: Mapping[str, object], prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """Rename an ImageNet ResNet's weights to HC-ResNet's, dropping the classifier.

    numpy arrays (detectron2 ``.pkl``) become tensors; ``num_batches_tracked`` is dropped.
    """
    rules = _D2_RULES if "stem.conv1.weight" in state else _TV_RULES
    out = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[prefix + new] = torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value
    return out


def adapt_to_deformable(state: Dict[str, torch.Tensor], model_keys: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Plain-conv weights of blocks the model made deformable go to their ``deform`` conv.

    ``layerK.0.conv2.weight`` → ``layerK.0.conv2.deform.weight`` (and the same for the
    shortcut ``downsample.0``) when the model has the latter; the offset convs keep their
    zero initialisation, so the loaded network computes the ImageNet model at first.
    """
    model_keys = set(model_keys)
    out = {}
    for key, value in state.items():
        if key not in model_keys and key.endswith(".weight"):
            deform_key = key[: -len("weight")] + "deform.weight"
            if deform_key in model_keys:
                key = deform_key
        out[key] = value
    return out

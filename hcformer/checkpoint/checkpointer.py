"""Checkpointer: local files only, ImageNet ResNets converted on the fly, atomic saves."""
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .resnet_weights import adapt_to_deformable, convert_resnet_state_dict, is_imagenet_resnet
from .swin_weights import convert_swin_state_dict, is_imagenet_swin

_REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "s3://", "gs://")


class HCFormerCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that never downloads and understands bare ImageNet backbones.

    - A remote MODEL.WEIGHTS (``detectron2://``, ``http(s)://``, ...) is refused with a
      message asking for a local file: building or loading a model never touches the network.
    - A torchvision ``.pth`` or detectron2 ``.pkl`` ImageNet ResNet is renamed to the
      HC-ResNet layout (``backbone.*``), its strided convs' weights moved into the
      deformable convs where the model has them.
    - An ImageNet Swin (official ``.pth``, Mask2Former's converted ``.pkl``, or timm's
      names) is renamed to the HC-Swin layout (final ``norm`` → ``norm3``, no classifier).
    - Checkpoints of the original HCFormer implementation need no conversion: its state-dict
      keys are this project's (tests/test_hcformer_model.py and tests/test_swin.py load
      state dicts built from its documented layout with no missing or unexpected key).
    - ``save`` writes to a temporary file and renames it, so a crash while saving leaves
      the previous checkpoint intact.
    """

    def load(self, path: str, *args, **kwargs):
        if path and path.startswith(_REMOTE_PREFIXES):
            raise ValueError(
                f"MODEL.WEIGHTS is a remote address ({path}); hcformer never downloads weights. "
                "Download the file yourself and pass its local path (MODEL.WEIGHTS /path/to/file), "
                'or MODEL.WEIGHTS "" to start from random initialisation.'
            )
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.WEIGHTS: no such file: {path}")
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        if is_imagenet_resnet(state.keys()):
            self.logger.info("Converting an ImageNet ResNet checkpoint to the HC-ResNet layout.")
            state = convert_resnet_state_dict(state)
            checkpoint["matching_heuristics"] = False
        elif is_imagenet_swin(state.keys()):
            self.logger.info("Converting an ImageNet Swin Transformer checkpoint to the HC-Swin layout.")
            state = convert_swin_state_dict(state)
            checkpoint["matching_heuristics"] = False
        checkpoint["model"] = adapt_to_deformable(state, self.model.state_dict().keys())
        return super()._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        fd, tmp = tempfile.mkstemp(dir=self.save_dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.tag_last_checkpoint(os.path.basename(path))

"""Checkpointer: local files only, no code run by loading, ImageNet backbones converted on the
fly, mismatching architectures refused, atomic saves."""
import os
import tempfile
from collections.abc import Mapping
from typing import Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .resnet_weights import adapt_to_deformable, convert_resnet_state_dict, is_imagenet_resnet
from .safe_loading import CheckpointFileError, load_checkpoint_file
from .swin_weights import convert_swin_state_dict, is_imagenet_swin

__all__ = ["HCFormerCheckpointer", "CheckpointMismatchError"]

# keys of the mismatch report listed in full; longer lists are cut with a count of the rest
_LISTED_KEYS = 20


class CheckpointMismatchError(ValueError):
    """The checkpoint was made for another architecture (tensor shapes differ, or no tensor of
    the file belongs to the model)."""

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
    - Files are read with ``torch.load(weights_only=True)``; pickles (``.pkl``, or a ``.pth``
      of arbitrary objects) only with ``allow_pickle`` (MODEL.ALLOW_PICKLE) or
      HCFORMER_ALLOW_PICKLE=1, since unpickling can run code (see ``safe_loading``). Truncated
      or foreign files give a ``CheckpointFileError`` naming the file.
    - A checkpoint whose tensors have other shapes than the model's, or none of whose tensors
      the model has, is refused with one ``CheckpointMismatchError`` listing every mismatch;
      missing or unexpected keys alone are logged (an ImageNet backbone lacks the head).
    - ``save`` writes to a temporary file and renames it, and so does the ``last_checkpoint``
      tag, so a crash while saving leaves the previous checkpoint intact and tagged. A
      process killed in the middle of a save leaves its temporary file behind; the next
      ``resume_or_load`` of a process that saves deletes such leftovers.
    """

    def __init__(self, model, save_dir: str = "", *, allow_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickle = allow_pickle

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

    def resume_or_load(self, path: str, *, resume: bool = True):
        self.remove_interrupted_saves()
        return super().resume_or_load(path, resume=resume)

    def remove_interrupted_saves(self) -> None:
        """Delete the temporary files of saves that a killed process never finished."""
        if not self.save_dir or not self.save_to_disk or not os.path.isdir(self.save_dir):
            return
        for name in os.listdir(self.save_dir):
            # the names ``save`` and ``tag_last_checkpoint`` give their temporary files
            if (name.startswith(".") and name.endswith(".tmp")) or name.startswith("last_checkpoint.tmp-"):
                self.logger.info(f"Removing {name}, left by a save that was interrupted.")
                os.unlink(os.path.join(self.save_dir, name))

    def _load_file(self, filename: str) -> Dict:
        if filename.endswith(".pkl"):
            load_checkpoint_file(filename, self.allow_pickle)  # refuses unless allowed
            # allowed: detectron2 knows the model-zoo layouts (detectron2 / Caffe2 .pkl files)
            return super()._load_file(filename)
        data = load_checkpoint_file(filename, self.allow_pickle)
        if not isinstance(data, Mapping):
            raise CheckpointFileError(
                f"{filename} holds a {type(data).__name__}, not a checkpoint (a dict of tensors, "
                'or a dict with the state dict under "model")'
            )
        data = dict(data)
        if not isinstance(data.get("model"), Mapping):
            data = {"model": data}
        return data

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
        if not checkpoint.get("matching_heuristics", False):  # names are final: compare now
            self._check_architecture(checkpoint["model"])
        return super()._load_model(checkpoint)

    def _check_architecture(self, state: Mapping) -> None:
        """Raise before anything is loaded if ``state`` does not fit the model."""
        expected = self.model.state_dict()
        # fvcore strips the prefix that DistributedDataParallel adds to saved names
        if state and all(key.startswith("module.") for key in state):
            state = {key[len("module."):]: value for key, value in state.items()}
        shared = [key for key in state if key in expected]
        mismatched = [
            f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
            for key in shared
            if tuple(getattr(state[key], "shape", ())) != tuple(expected[key].shape)
        ]
        if shared and not mismatched:
            return
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        lines = [
            f"The checkpoint does not fit this model ({type(self.model).__name__}): "
            f"{len(shared) - len(mismatched)} tensors match, {len(mismatched)} have another "
            f"shape, {len(missing)} of the model are missing, {len(unexpected)} of the file "
            "are unknown to the model. Was it trained with another config (backbone, "
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES, NUM_OBJECT_QUERIES, HIDDEN_DIM, ...)? To "
            "fine-tune with another head, delete the mismatching keys from the file first."
        ]
        for title, keys in (
            ("shape mismatches", mismatched),
            ("missing from the checkpoint", missing if not shared else []),
            ("unknown to the model", unexpected if not shared else []),
        ):
            if keys:
                lines.append(f"{title}:")
                lines += [f"    {key}" for key in keys[:_LISTED_KEYS]]
                if len(keys) > _LISTED_KEYS:
                    lines.append(f"    ... and {len(keys) - _LISTED_KEYS} more")
        raise CheckpointMismatchError("\n".join(lines))

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

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        # Rewritten in place, a crash could leave "last_checkpoint" empty and --resume would
        # silently start from scratch: write a temporary file and rename it instead.
        path = os.path.join(self.save_dir, "last_checkpoint")
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(last_filename_basename)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

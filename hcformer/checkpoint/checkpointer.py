"""Checkpointer: local files only, no code run by loading, ImageNet backbones converted on the
fly, mismatching architectures refused, atomic saves."""
import contextlib
import errno
import os
import shutil
from collections.abc import Mapping
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .atomic_files import remove_abandoned_temporary_files, write_atomically
from .resnet_weights import adapt_to_deformable, convert_resnet_state_dict, is_imagenet_resnet
from .safe_loading import CheckpointFileError, load_checkpoint_file
from .swin_weights import convert_swin_state_dict, is_imagenet_swin

__all__ = [
    "HCFormerCheckpointer",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "last_complete_checkpoint",
    "read_last_checkpoint",
]

# lines of each list of the mismatch report; longer lists are grouped by module, then cut
_LISTED_KEYS = 20

# Buffers that the model computes from its config rather than learns: a file may lack them
# (other implementations make some non-persistent; torchvision-style conversions drop
# num_batches_tracked, which BatchNorm then restarts at 0) or hold them with another config's
# shape (empty_weight has NUM_CLASSES + 1 entries). They never make a file a mismatch.
_DERIVED_BUFFERS = frozenset(
    {"empty_weight", "pixel_mean", "pixel_std", "num_batches_tracked", "relative_position_index"}
)


class CheckpointMismatchError(ValueError):
    """The checkpoint was made for another architecture: tensor shapes differ, no tensor of the
    file belongs to the model, or a whole-model checkpoint lacks or adds tensors."""


class CheckpointWriteError(OSError):
    """A checkpoint or the ``last_checkpoint`` tag could not be written for lack of space (or
    quota, or file size limit); the message names the file, the space, and the last complete
    checkpoint, which is intact."""


# what a full disk looks like: no space, no quota left, or a file size limit reached
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _behind(error: BaseException, matches: Callable[[BaseException], bool]) -> Optional[BaseException]:
    """The first exception of ``error``'s chain (itself, then what it was raised from or while
    handling) that ``matches``, if any. torch.save reports what stopped it in the middle of its
    zip file (a full disk, a signal) as the writer's RuntimeError ("unexpected pos ...") raised
    while handling it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if matches(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def _is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about what saving it takes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def read_last_checkpoint(save_dir: str) -> Optional[str]:
    """The path of the checkpoint that ``save_dir/last_checkpoint`` names; None without that file.

    Raises:
        FileNotFoundError: the tag is empty or names a missing file (fvcore would hand the
            missing path, or ``save_dir`` itself for an empty tag, to ``load`` as if it were
            MODEL.WEIGHTS); the message says what to write into it.
    """
    tag = os.path.join(save_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    if name and os.path.isfile(os.path.join(save_dir, name)):
        return os.path.join(save_dir, name)
    saved = sorted(n for n in os.listdir(save_dir) if n.endswith(".pth"))
    raise FileNotFoundError(
        f"--resume: {tag} "
        + (f"names {name}, which does not exist" if name else "is empty")
        + ". It should hold the file name of the checkpoint to continue from; "
        + (f"{save_dir} holds {', '.join(saved)}. " if saved else f"{save_dir} holds no checkpoint. ")
        + "Write the name of one of them into it, delete it to start from MODEL.WEIGHTS, or "
        "run without --resume."
    )


def last_complete_checkpoint(save_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` would continue from (what ``save_dir/last_checkpoint``
    names), or None when there is none."""
    if not save_dir:
        return None
    with contextlib.suppress(FileNotFoundError):
        return read_last_checkpoint(save_dir)
    return None


def _is_derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _DERIVED_BUFFERS


def _matches_prefix(key: str, prefixes: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``prefixes`` or inside one of them (whole name components:
    "a.layers.1" takes "a.layers.1.weight", not "a.layers.10.weight")."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _summarise(keys: Sequence[str], limit: int = _LISTED_KEYS) -> List[str]:
    """``keys`` one per line; more than ``limit`` are grouped by module ("m.* (n tensors)") at
    the deepest level that gives at most ``limit`` lines, and cut there if still too many."""
    if len(keys) <= limit:
        return list(keys)
    for depth in range(max(max(key.count(".") for key in keys), 1), 0, -1):
        groups: Dict[str, List[str]] = {}
        for key in keys:
            groups.setdefault(".".join(key.split(".")[:depth]), []).append(key)
        if len(groups) <= limit:
            break
    lines = [
        members[0] if len(members) == 1 else f"{module}.* ({len(members)} tensors)"
        for module, members in groups.items()
    ]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


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
      keys are this project's (tests/test_hcformer_model.py and tests/test_swin_released_checkpoint.py load
      state dicts built from its documented layout with no missing or unexpected key).
    - Files are read with ``torch.load(weights_only=True)``; pickles (``.pkl``, or a ``.pth``
      of arbitrary objects) only with ``allow_pickle`` (MODEL.ALLOW_PICKLE) or
      HCFORMER_ALLOW_PICKLE=1, since unpickling can run code (see ``safe_loading``). Truncated
      or foreign files give a ``CheckpointFileError`` naming the file.
    - A checkpoint that does not fit the model is refused before anything is loaded, with
      one ``CheckpointMismatchError`` naming every tensor of another shape (with both shapes),
      every tensor missing from the file and every tensor unknown to the model (long lists
      grouped by module, always with their counts). A *whole-model* checkpoint, one with any
      tensor of the model outside ``backbone.*`` (``sem_seg_head.*``, ...), must match
      exactly; *backbone weights* (only ``backbone.*`` tensors of the model, e.g. ImageNet
      weights, converted or not) may lack the rest and are refused only for other shapes,
      for backbone tensors the model lacks (another depth or variant), or when they share no
      tensor with the model. Buffers computed from the config (``empty_weight``,
      ``pixel_mean``/``pixel_std``, ``num_batches_tracked``, ``relative_position_index``)
      never count as mismatches. This holds for files that detectron2 would load by name
      matching too (``.pkl`` files of its model zoo and of Mask2Former's) whenever their names
      are already the model's; name matching is left to files that need it (e.g. ImageNet
      backbones with other names).
    - ``ignore_prefixes`` (MODEL.WEIGHTS_IGNORE) names tensors not taken from the file, which
      keep their initialisation, e.g. ``["sem_seg_head.predictor.class_embed"]`` to fine-tune a
      COCO model on another number of classes. ``resume_or_load`` does not apply it when it
      resumes from OUTPUT_DIR, whose checkpoints are of this very model.
    - ``resume_or_load`` refuses a ``last_checkpoint`` that is empty or names a missing file,
      saying so (fvcore would report the missing file as if it were MODEL.WEIGHTS).
    - ``save`` writes to a temporary file and renames it, and so does the ``last_checkpoint``
      tag (``atomic_files.write_atomically``), so a crash, a signal or a full disk while saving
      leaves the previous checkpoint intact and tagged. Files get the process umask's mode, as
      the other outputs. A full disk is one ``CheckpointWriteError`` naming the file, the free
      and the needed space, and the last complete checkpoint.
    - A process killed outright (SIGKILL) in the middle of a save leaves its temporary file
      behind, named after its pid and host; ``resume_or_load`` of a process that saves deletes
      those whose writer is no longer running on this host, and no other: a training may be
      saving into the same directory right now.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_pickle: bool = False,
        ignore_prefixes: Iterable[str] = (),
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickle = allow_pickle
        self.ignore_prefixes = tuple(p.rstrip(".") for p in ignore_prefixes)
        self._resuming = False
        # the file that ``load`` is reading, for the error messages of the checkpointables
        self.loading = ""

    def load(self, path: str, *args, **kwargs):
        if path and path.startswith(_REMOTE_PREFIXES):
            raise ValueError(
                f"MODEL.WEIGHTS is a remote address ({path}); hcformer never downloads weights. "
                "Download the file yourself and pass its local path (MODEL.WEIGHTS /path/to/file), "
                'or MODEL.WEIGHTS "" to start from random initialisation.'
            )
        if path and os.path.isdir(path):
            inside = sorted(n for n in os.listdir(path) if n.endswith((".pth", ".pkl")))
            listed = ", ".join(os.path.join(path, n) for n in inside[:5]) + (" ..." if len(inside) > 5 else "")
            raise IsADirectoryError(
                f"MODEL.WEIGHTS {path} is a directory, not a checkpoint file; "
                + (f"name one of the checkpoints in it: {listed}" if inside else "name a .pth or .pkl file")
            )
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.WEIGHTS: no such file: {path}")
        self.loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self.loading = ""

    def resume_or_load(self, path: str, *, resume: bool = True):
        self.remove_interrupted_saves()
        # a resumed run continues this model: every tensor of its checkpoint is loaded
        self._resuming = resume and self.has_checkpoint()
        if self._resuming:
            read_last_checkpoint(self.save_dir)  # refuses a tag that names no file
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def remove_interrupted_saves(self) -> None:
        """Delete the temporary files of saves whose writer was killed (see the class docstring)."""
        if not self.save_dir or not self.save_to_disk or not os.path.isdir(self.save_dir):
            return
        for name in remove_abandoned_temporary_files(self.save_dir):
            self.logger.info(f"Removed {name}, left by a save that was interrupted.")

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
        # fvcore strips the prefix that DistributedDataParallel adds to saved names; strip it
        # first, so that the checks below see the final names
        if state and all(key.startswith("module.") for key in state):
            state = {key[len("module."):]: value for key, value in state.items()}
        if is_imagenet_resnet(state.keys()):
            self.logger.info("Converting an ImageNet ResNet checkpoint to the HC-ResNet layout.")
            state = convert_resnet_state_dict(state)
            checkpoint["matching_heuristics"] = False
        elif is_imagenet_swin(state.keys()):
            self.logger.info("Converting an ImageNet Swin Transformer checkpoint to the HC-Swin layout.")
            state = convert_swin_state_dict(state)
            checkpoint["matching_heuristics"] = False
        state = adapt_to_deformable(state, self.model.state_dict().keys())
        if checkpoint.get("matching_heuristics", False) and self._has_final_names(state):
            # detectron2 marks every model-zoo .pkl (Mask2Former's whole models too) for name
            # matching, which skips each tensor of another shape with a mere warning and loads
            # the rest: a file already named like the model is checked like any other instead
            self.logger.info("The checkpoint's names are the model's: loading it without name matching.")
            checkpoint["matching_heuristics"] = False
        state, left_out = self._leave_out(state)
        if not checkpoint.get("matching_heuristics", False):  # names are final: compare now
            self._check_architecture(state, left_out)
        checkpoint["model"] = state
        return super()._load_model(checkpoint)

    def _has_final_names(self, state: Mapping) -> bool:
        """Whether ``state`` is named like the model, so that name matching has nothing to do:
        it holds a tensor of the model outside the backbone (a whole model), or every tensor it
        holds is one of the model's."""
        expected = self.model.state_dict()
        learnt = [key for key in state if not _is_derived(key)]
        shared = [key for key in learnt if key in expected]
        if any(not key.startswith("backbone.") for key in shared):
            return True
        return bool(shared) and len(shared) == len(learnt)

    def _leave_out(self, state: Dict) -> Tuple[Dict, List[str]]:
        """``state`` without the tensors that the model keeps at their initialisation, and the
        names of the model's tensors that need not be in the file for that reason.

        Here: what ``ignore_prefixes`` names, unless resuming. Subclasses leave out more
        (PaCa: cluster projections whose number of clusters changed).
        """
        if not self.ignore_prefixes or self._resuming:
            return state, []
        kept = {k: v for k, v in state.items() if not _matches_prefix(k, self.ignore_prefixes)}
        model_keys = [k for k in self.model.state_dict() if _matches_prefix(k, self.ignore_prefixes)]
        for prefix in self.ignore_prefixes:
            if not any(_matches_prefix(k, (prefix,)) for k in model_keys):
                self.logger.warning(f"MODEL.WEIGHTS_IGNORE: the model has no tensor named {prefix}[.*]")
        self.logger.info(
            f"MODEL.WEIGHTS_IGNORE: {len(state) - len(kept)} tensors of the file not loaded; "
            f"{len(model_keys)} tensors of the model keep their initialisation."
        )
        return kept, model_keys

    def _check_architecture(self, state: Mapping, left_out: Iterable[str] = ()) -> None:
        """Raise before anything is loaded if ``state`` does not fit the model (see the class
        docstring); ``left_out``: tensors of the model that the file need not have."""
        expected = self.model.state_dict()
        shared = [key for key in state if key in expected and not _is_derived(key)]
        mismatched = [
            f"{key}: checkpoint {tuple(getattr(state[key], 'shape', ()))}, model {tuple(expected[key].shape)}"
            for key in shared
            if tuple(getattr(state[key], "shape", ())) != tuple(expected[key].shape)
        ]
        # a file with weights of the model outside its backbone is a whole model: it must match
        whole_model = any(not key.startswith("backbone.") for key in shared)
        left_out = set(left_out)
        missing = [
            key for key in expected if key not in state and key not in left_out and not _is_derived(key)
        ]
        unexpected = [key for key in state if key not in expected]
        # backbone weights may lack the head, but backbone tensors the model lacks mean another
        # backbone (e.g. a ResNet-101 file for a ResNet-50)
        foreign_backbone = [key for key in unexpected if key.startswith("backbone.")]
        if shared and not mismatched and not (missing or unexpected if whole_model else foreign_backbone):
            return
        if not shared:
            kind = "none of its tensors belongs to the model"
        else:
            kind = "the file holds a whole model" if whole_model else "the file holds backbone weights"
        lines = [
            f"The checkpoint{' ' + self.loading if self.loading else ''} does not fit this model "
            f"({type(self.model).__name__}; {kind}): {len(shared) - len(mismatched)} tensors "
            f"match, {len(mismatched)} have another shape, {len(missing)} of the model are missing "
            f"from the file, {len(unexpected)} of the file are unknown to the model. Was it trained with "
            "another config (backbone, MODEL.MASK_FORMER.DEC_LAYERS, NUM_OBJECT_QUERIES, HIDDEN_DIM, "
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES, ...)? To fine-tune it with another head, e.g. on "
            'another number of classes, name what to leave out: MODEL.WEIGHTS_IGNORE '
            '["sem_seg_head.predictor.class_embed"].'
        ]
        lists = [("shape mismatches", mismatched)]
        if whole_model or not shared:
            lists += [("missing from the checkpoint", missing), ("unknown to the model", unexpected)]
        else:  # backbone weights may well lack the head
            lists += [("backbone tensors unknown to the model", foreign_backbone)]
        for title, keys in lists:
            if keys:
                lines.append(f"{title} ({len(keys)}):")
                lines += [f"    {line}" for line in _summarise(keys)]
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
        self._write(path, lambda f: torch.save(data, f), _tensor_bytes(data))
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        # Rewritten in place, a crash could leave "last_checkpoint" empty and --resume would
        # silently start from scratch: write a temporary file and rename it instead.
        content = last_filename_basename.encode()
        self._write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(content), len(content))

    def _write(self, path: str, write: Callable, needed: int) -> None:
        """``write_atomically``, with a full disk reported as one ``CheckpointWriteError``
        instead of torch's chained tracebacks, and a signal or Ctrl-C (a KeyboardInterrupt such
        as ``TrainingInterrupted``) that came in the middle of torch.save raised as itself."""
        try:
            write_atomically(path, write)
        except Exception as error:
            interruption = _behind(error, lambda e: isinstance(e, KeyboardInterrupt))
            if interruption is not None:
                raise interruption from None
            cause = _behind(error, _is_storage_error)
            if cause is None:
                raise
            # the temporary file is gone by now: what is free is what the next try will have
            directory = os.path.dirname(path)
            try:
                free = _size(shutil.disk_usage(directory).free)
            except OSError:
                free = "unknown space"
            last = last_complete_checkpoint(self.save_dir)
            raise CheckpointWriteError(
                f"Could not write {path}: {cause.strerror} ({directory}: {free} free, about "
                f"{_size(needed)} needed). Nothing already written was changed; last complete "
                f"checkpoint: {last or 'none yet'}. Free some space (or set another OUTPUT_DIR) and "
                + ("run again with --resume to continue from it." if last else "run again.")
            ) from None

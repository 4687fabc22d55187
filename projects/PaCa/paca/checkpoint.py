"""Loading weights into PaCa models when the number of clusters changed, or from a classifier.

PaCa's M is task-specific (paper §3.2.4): an ImageNet model with M = 100 is fine-tuned on
ADE20K with M = 200. Only the clustering's last layer (``to_clusters``, C → M) depends on M;
``drop_changed_cluster_projections`` leaves it out of the checkpoint where the model's M
differs, so the model keeps its fresh initialisation for it, and says which it left out.
``PaCaCheckpointer`` does that on every load (``MODEL.WEIGHTS``, ``--resume``) and also
accepts a bare ``PaCaViTClassifier`` state dict as backbone weights.
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from hcformer.checkpoint import HCFormerCheckpointer

# the last layer of every clustering (onsite conv / MLP, the teacher's heads)
_CLUSTER_PROJECTION = re.compile(r"(^|\.)to_clusters\.weight$")


@dataclass(frozen=True)
class ClusterCountChange:
    """A cluster projection left out of a checkpoint: M in the checkpoint → M in the model."""

    key: str
    checkpoint_clusters: int
    model_clusters: int

    def __str__(self) -> str:
        return (
            f"{self.key}: {self.checkpoint_clusters} clusters in the checkpoint, {self.model_clusters} in the "
            "model: not loaded, re-initialised"
        )


def drop_changed_cluster_projections(
    state: Mapping[str, Any], model_state: Mapping[str, Any]
) -> Tuple[Dict[str, Any], List[ClusterCountChange]]:
    """``state`` without the cluster projections whose number of clusters differs from the model's.

    A projection weight is (M, C, ...) for a conv or (M, C) for a linear layer; it is left out
    when its M differs and the rest of its shape matches (anything else is a real mismatch,
    left for the loader to report). Values may be tensors or numpy arrays.

    Returns:
        (the filtered state dict, one ``ClusterCountChange`` per left-out projection)
    """
    kept: Dict[str, Any] = {}
    changes: List[ClusterCountChange] = []
    for key, value in state.items():
        if _CLUSTER_PROJECTION.search(key) and key in model_state:
            old, new = tuple(value.shape), tuple(model_state[key].shape)
            if old != new and old[1:] == new[1:]:
                changes.append(ClusterCountChange(key, old[0], new[0]))
                continue
        kept[key] = value
    return kept, changes


def is_paca_classifier(keys: Iterable[str]) -> bool:
    """Whether a state dict is a ``PaCaViTClassifier``'s (this project's layout, no prefix)."""
    keys = set(keys)
    return "head.weight" in keys and "norm.weight" in keys and any(k.startswith("stages.0.blocks.") for k in keys)


def classifier_to_backbone(state: Mapping[str, Any], prefix: str = "backbone.") -> Dict[str, Any]:
    """A ``PaCaViTClassifier`` state dict as D2PaCa / D2HCPaCa weights under a meta-architecture:
    the trunk under ``{prefix}vit.``, the last norm as res5's, the classifier dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if key.startswith("norm."):
            out[f"{prefix}norms.res5.{key[len('norm.'):]}"] = value
        else:
            out[f"{prefix}vit.{key}"] = value
    return out


class PaCaCheckpointer(HCFormerCheckpointer):
    """HCFormer's checkpointer (local files only, ResNet / Swin conversion) that also loads
    PaCa classifiers as backbones and re-initialises cluster projections whose M changed.

    ``cluster_count_changes`` holds what the last load left out.
    """

    cluster_count_changes: Sequence[ClusterCountChange] = ()

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        if is_paca_classifier(state.keys()):
            self.logger.info("Loading a PaCa-ViT classifier as the backbone (its classifier head is dropped).")
            checkpoint["model"] = classifier_to_backbone(state)
            checkpoint["matching_heuristics"] = False
        return super()._load_model(checkpoint)

    def _leave_out(self, state):
        # the re-initialised projections are left out on purpose: a whole-model checkpoint
        # lacking them still fits
        state, left_out = super()._leave_out(state)
        state, self.cluster_count_changes = drop_changed_cluster_projections(state, self.model.state_dict())
        for change in self.cluster_count_changes:
            self.logger.warning(str(change))
        return state, left_out + [change.key for change in self.cluster_count_changes]

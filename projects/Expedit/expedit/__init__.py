"""Expedit (Liang et al., "Expediting Large-Scale Vision Transformer for Dense Prediction
without Fine-tuning", NeurIPS 2022) for HCFormer's Swin backbones: training-free token
clustering inside the windows of one stage, and reconstruction before its patch merging."""
from .config import ExpeditHCSwinTransformer, add_expedit_config, apply_expedit
from .swin import ExpeditSwinStage, expedite_swin, interpolate_rel_pos_bias
from .token_clustering import Clustering, SlotLayout, clustering_macs, token_clustering, token_reconstruction

from hcformer.config import register_config_extension

# every config built after importing the project (train_net, tools, demo) knows its keys
register_config_extension(add_expedit_config)

__all__ = [
    "add_expedit_config",
    "apply_expedit",
    "ExpeditHCSwinTransformer",
    "ExpeditSwinStage",
    "expedite_swin",
    "interpolate_rel_pos_bias",
    "Clustering",
    "SlotLayout",
    "clustering_macs",
    "token_clustering",
    "token_reconstruction",
]

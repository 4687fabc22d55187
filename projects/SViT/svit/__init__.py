"""SViT (super token vision transformer) backbones for HCFormer and detectron2.

Importing this package registers "D2SViT" and "D2HCSViT" in detectron2's BACKBONE_REGISTRY;
``add_svit_config(cfg)`` adds their MODEL.SVIT.* keys.
"""
from .backbone import D2HCSViT, D2SViT
from .classifier import SViTClassifier, svit_classifier
from .config import add_svit_config
from .hierarchy import stage_super_tokens, super_token_hierarchy
from .model import SVIT_VARIANTS, SViT
from .super_token_attention import SuperTokenAttention, sample_super_tokens

from hcformer.config import register_config_extension

# every config built after importing the project (train_net, tools, demo) knows its keys
register_config_extension(add_svit_config)

__all__ = [
    "D2HCSViT",
    "D2SViT",
    "SVIT_VARIANTS",
    "SViT",
    "SViTClassifier",
    "SuperTokenAttention",
    "add_svit_config",
    "sample_super_tokens",
    "stage_super_tokens",
    "super_token_hierarchy",
    "svit_classifier",
]

"""PaCa-ViT for hcformer (projects/PaCa). Importing it registers, through detectron2's registries:
backbones "D2PaCa" and "D2HCPaCa", and the semantic-segmentation head "PaCaSegHead"."""
from . import modeling  # noqa: F401  (registers the backbones and the head)
from .checkpoint import PaCaCheckpointer, drop_changed_cluster_projections
from .config import add_paca_config

from hcformer.config import register_config_extension

# every config built after importing the project (train_net, tools, demo) knows its keys
register_config_extension(add_paca_config)

__all__ = ["PaCaCheckpointer", "add_paca_config", "drop_changed_cluster_projections"]

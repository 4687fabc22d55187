"""CAST (segment tokens over superpixels, graph pooling) for HCFormer and detectron2.

Importing this package registers the backbone "D2HCCAST" (BACKBONE_REGISTRY), the head
"CASTFormerHead" (SEM_SEG_HEADS_REGISTRY) and the decoder "CASTTransformerDecoder"
(TRANSFORMER_DECODER_REGISTRY); ``add_cast_config(cfg)`` adds the MODEL.CAST.* keys.
"""
from .backbone import D2HCCAST
from .config import add_cast_config
from .graph_pool import GraphPool, farthest_point_sampling
from .head import CASTFormerHead, CASTTransformerDecoder
from .hierarchy import CASTHierarchy
from .model import CAST, CAST_VARIANTS, CASTClassifier, CASTOutput, cast_classifier
from .segment_tokens import ConvStem, SegmentEmbedding, scatter_mean
from .superpixels import compute_superpixels, rgb_to_lab, seeds_available, slic

from hcformer.config import register_config_extension

# every config built after importing the project (train_net, tools, demo) knows its keys
register_config_extension(add_cast_config)

__all__ = [
    "CAST", "CAST_VARIANTS", "CASTClassifier", "CASTFormerHead", "CASTHierarchy", "CASTOutput",
    "CASTTransformerDecoder", "ConvStem", "D2HCCAST", "GraphPool", "SegmentEmbedding", "add_cast_config",
    "cast_classifier", "compute_superpixels", "farthest_point_sampling", "rgb_to_lab", "scatter_mean",
    "seeds_available", "slic",
]

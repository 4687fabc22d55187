"""PaCa-ViT models; importing this package registers D2PaCa, D2HCPaCa and PaCaSegHead."""
from .attention import PaCaAttention
from .backbone import D2HCPaCa, D2PaCa, HCPaCaBackbone, PaCaBackbone
from .block import ConvFFN, PaCaBlock, PaCaStage
from .clustering import ConvClustering, MlpClustering, soft_assignment
from .paca_vit import PACA_VARIANTS, PaCaViT, PaCaViTClassifier, paca_classifier
from .seg_head import PaCaSegHead
from .teacher import ClusteringTeacher

__all__ = [
    "PACA_VARIANTS",
    "ClusteringTeacher",
    "ConvClustering",
    "ConvFFN",
    "D2HCPaCa",
    "D2PaCa",
    "HCPaCaBackbone",
    "MlpClustering",
    "PaCaAttention",
    "PaCaBackbone",
    "PaCaBlock",
    "PaCaSegHead",
    "PaCaStage",
    "PaCaViT",
    "PaCaViTClassifier",
    "paca_classifier",
    "soft_assignment",
]

"""detectron2 backbones of PaCa-ViT: "D2PaCa" (res2-res5) and "D2HCPaCa" (+ HCFormer clustering).

D2PaCa gives the four stage outputs, each through its own LayerNorm, at strides 4-32 — what
PaCa's dense heads (Mask R-CNN, UperNet, the PaCa segmentation head) take. D2HCPaCa adds the
clustering layer of HCFormer (eq. (3)) at its L coarsest transitions and returns the
``LocalGridHierarchy`` under "assign", for the HCFormer head: the fine side of transition k
is the output of stage k, the coarse side the transition's output (the input of stage k+1).
"""
from typing import Dict, Optional, Sequence, Tuple

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from hcformer.layers.clustering import ClusteringLayer
from hcformer.modeling.backbone.clustered_downsampling import ClusteredDownsampling, clustered_transitions
from hcformer.modeling.backbone.pyramid import FEATURE_NAMES, check_rgb_input, describe_outputs

from .paca_vit import PaCaViT


class PaCaBackbone(Backbone):
    """PaCa-ViT as a detectron2 backbone: ``{"res2": .., "res5": ..}`` (B, C_i, H/s, W/s).

    ``forward(x, image_sizes=None)``: with ``image_sizes`` (as HCFormer passes them), the
    batch padding is left out of the clusters. Any input size works; ``size_divisibility``
    32 keeps the maps of a padded batch aligned with the image.

    Args:
        out_features: subset of res2..res5.
        **vit_kwargs: ``PaCaViT`` arguments (dims, depths, num_clusters, ...).
    """

    def __init__(self, out_features: Sequence[str] = FEATURE_NAMES, **vit_kwargs):
        super().__init__()
        self.vit = PaCaViT(**vit_kwargs)
        describe_outputs(self, out_features, self.vit.dims)
        self._out_features = [k for k in FEATURE_NAMES if k in out_features]  # in stage order
        # each stage output has its own LayerNorm (the classifier's last norm is "res5")
        self.norms = nn.ModuleDict({k: LayerNorm2d(self._out_feature_channels[k], eps=1e-6) for k in self._out_features})

    def forward(self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, object]:
        """(B, 3, H, W) normalised images → {name: (B, C, ceil(H / stride), ceil(W / stride))}."""
        stages = self.vit.forward_stages(x, image_sizes)
        return self._named_outputs(stages)

    def _named_outputs(self, stages) -> Dict[str, object]:
        outputs = dict(zip(FEATURE_NAMES, (out for _, out in stages)))
        return {k: self.norms[k](outputs[k]) for k in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return 32


class HCPaCaBackbone(PaCaBackbone):
    """PaCa-ViT with HCFormer clustering at its L coarsest transitions (HC-PaCa).

    ``forward(x, image_sizes=None)`` also returns ``"assign"``: a ``LocalGridHierarchy`` of
    (B, 9, H_k, W_k) assignments, coarsest first; cells of the batch padding are never
    candidates. ``clustering_layers`` are ordered coarsest first, as in ``HCResNet``.

    Args:
        level: number of clustered transitions, the coarsest (0-3).
        emb_dim, init_scale: ``ClusteringLayer`` embedding channels and initial scale s.
    """

    def __init__(self, level: int = 3, emb_dim: int = 128, init_scale: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        dims = self.vit.dims
        # transition k: the output of stage k (fine) → the input of stage k + 1 (coarse)
        self.clustering_layers = nn.ModuleList(  # coarsest first
            ClusteringLayer(dims[k], dims[k + 1], emb_dim, init_scale) for k in reversed(clustered_transitions(level))
        )

    def forward(self, x: Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, object]:
        stages = self.vit.forward_stages(x, image_sizes)
        result = self._named_outputs(stages)
        clusterings = ClusteredDownsampling(self.clustering_layers, image_sizes)
        for k in range(3):
            clusterings(k, stages[k][1], stages[k + 1][0])
        result["assign"] = clusterings.hierarchy(stages[3][1].shape[-2:])
        return result


def paca_kwargs_from_cfg(cfg) -> Dict[str, object]:
    """``PaCaBackbone`` arguments from MODEL.PACA.*."""
    p = cfg.MODEL.PACA
    return dict(
        dims=p.EMBED_DIMS,
        depths=p.DEPTHS,
        num_heads=p.NUM_HEADS,
        num_clusters=p.NUM_CLUSTERS,
        mlp_ratio=p.MLP_RATIO,
        qkv_bias=p.QKV_BIAS,
        clustering=p.CLUSTERING,
        clustering_scope=p.CLUSTERING_SCOPE,
        teacher_depths=p.TEACHER.DEPTHS if p.TEACHER.ENABLED else None,
        teacher_kernel_size=p.TEACHER.KERNEL_SIZE,
        drop_path_rate=p.DROP_PATH_RATE,
        out_features=p.OUT_FEATURES,
    )


@BACKBONE_REGISTRY.register()
class D2PaCa(PaCaBackbone):
    """``MODEL.BACKBONE.NAME: "D2PaCa"``, configured by MODEL.PACA.*."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        check_rgb_input("D2PaCa", input_shape)
        super().__init__(**paca_kwargs_from_cfg(cfg))


@BACKBONE_REGISTRY.register()
class D2HCPaCa(HCPaCaBackbone):
    """``MODEL.BACKBONE.NAME: "D2HCPaCa"``, configured by MODEL.PACA.* and MODEL.HC.*."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        check_rgb_input("D2HCPaCa", input_shape)
        super().__init__(
            level=cfg.MODEL.HC.LEVEL,
            emb_dim=cfg.MODEL.HC.EMB_DIM,
            init_scale=cfg.MODEL.HC.TEMPERATURE,
            **paca_kwargs_from_cfg(cfg),
        )

"""The SViT backbones of the detectron2 registry, configured by MODEL.SVIT.* (``add_svit_config``).

- ``D2SViT``: the plain backbone (res2..res5), for any detectron2 meta-architecture;
- ``D2HCSViT``: HC-SViT for HCFormer — clustering at the MODEL.HC.LEVEL coarsest stage
  transitions (MODEL.HC.EMB_DIM, MODEL.HC.TEMPERATURE), the hierarchy under "assign", and
  HCFormer+'s encoder on res5 with MODEL.RESNETS.AUX "transformer" (the key the original
  HCFormer reads for every backbone).

ImageNet weights come through MODEL.WEIGHTS, converted first with
projects/SViT/tools/convert_svit_checkpoint.py.
"""
from typing import Any, Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from hcformer.modeling.backbone import build_res5_aux
from hcformer.modeling.backbone.pyramid import check_rgb_input

from .model import SViT


def _svit_kwargs(cfg) -> Dict[str, Any]:
    s = cfg.MODEL.SVIT
    return dict(
        embed_dims=s.EMBED_DIMS,
        depths=s.DEPTHS,
        num_heads=s.NUM_HEADS,
        stoken_sizes=s.STOKEN_SIZES,
        n_iter=s.N_ITER,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_path_rate=s.DROP_PATH_RATE,
        layer_scale=s.LAYER_SCALE,
        layer_scale_init=s.LAYER_SCALE_INIT,
        norm=s.NORM,
        out_features=s.OUT_FEATURES,
        use_checkpoint=s.USE_CHECKPOINT,
    )


@BACKBONE_REGISTRY.register()
class D2SViT(SViT):
    """``MODEL.BACKBONE.NAME: "D2SViT"``: SViT's res2..res5 (strides 4..32), no clustering."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        check_rgb_input("D2SViT", input_shape)
        super().__init__(level=0, return_hierarchy=False, **_svit_kwargs(cfg))


@BACKBONE_REGISTRY.register()
class D2HCSViT(SViT):
    """``MODEL.BACKBONE.NAME: "D2HCSViT"``: HC-SViT, configured by MODEL.SVIT.* and MODEL.HC.*."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        check_rgb_input("D2HCSViT", input_shape)
        super().__init__(
            level=cfg.MODEL.HC.LEVEL,
            emb_dim=cfg.MODEL.HC.EMB_DIM,
            init_scale=cfg.MODEL.HC.TEMPERATURE,
            return_hierarchy=True,
            aux=build_res5_aux(cfg, in_channels=cfg.MODEL.SVIT.EMBED_DIMS[-1]),
            **_svit_kwargs(cfg),
        )

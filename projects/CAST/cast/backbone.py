"""``D2HCCAST``: CAST as an HCFormer backbone (detectron2 BACKBONE_REGISTRY).

Its output "res5" is the set of coarsest region tokens laid out as a (B, C, N, 1) map, so the
1×1 projections of HCFormer's decoder apply unchanged; "assign" is the ``CASTHierarchy`` that
takes mask logits over those tokens down to the stride-8 grid (or to the pixels,
MODEL.CAST.DECODE_STRIDE 1). Superpixels are computed here,
in the model's input path, from the normalised batch (so train and test see the same).

Exports (tools/export_model.py): SLIC is tensor code, so a graph traced at one image size
holds it, superpixels included; its seed grid, and with it the number of tokens, follows the
image size, so no graph holds every size (no --dynamic). SEEDS runs in OpenCV, outside any graph.
"""
from typing import Dict, List, Optional, Tuple

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn

from hcformer.modeling.backbone.pyramid import check_rgb_input

from .model import CAST

__all__ = ["D2HCCAST"]


@BACKBONE_REGISTRY.register()
class D2HCCAST(Backbone):
    """``MODEL.BACKBONE.NAME: "D2HCCAST"``, configured by MODEL.CAST.* (``add_cast_config``)."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        check_rgb_input("D2HCCAST", input_shape)
        c, sp = cfg.MODEL.CAST, cfg.MODEL.CAST.SUPERPIXEL
        self.encoder = CAST(
            dim=c.DIM, num_heads=c.NUM_HEADS, depths=c.DEPTHS, num_tokens=c.NUM_TOKENS, kappa=c.KAPPA,
            mlp_ratio=c.MLP_RATIO, drop_path_rate=c.DROP_PATH_RATE, pos_base_size=c.POS_BASE_SIZE,
            decode_stride=c.DECODE_STRIDE,
            num_superpixels=sp.NUM_SEGMENTS, superpixel_size=sp.SIZE, superpixel_method=sp.METHOD,
            slic_compactness=sp.COMPACTNESS, superpixel_iterations=sp.ITERATIONS,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD, rgb_input=cfg.INPUT.FORMAT == "RGB",
        )
        self.norm = nn.LayerNorm(c.DIM)
        self._out_features = ["res5"]
        # nominal: the tokens are not on a grid; 32 keeps size_divisibility as for the other backbones
        self._out_feature_strides = {"res5": 32}
        self._out_feature_channels = {"res5": c.DIM}

    @property
    def size_divisibility(self) -> int:
        return 8  # the stem's stride

    def export_problem(self, dynamic: bool) -> Optional[str]:
        """Why this backbone cannot be exported as asked (module docstring), or None."""
        method = self.encoder.superpixel_method
        if method.upper() != "SLIC":
            return (f"MODEL.CAST.SUPERPIXEL.METHOD {method!r} runs in OpenCV, outside the graph; only "
                    "'SLIC' (tensor code) exports, best with a model trained on SLIC superpixels")
        if dynamic:
            return ("its SLIC seed grid, and with it the number of tokens, follows the image size: "
                    "export without --dynamic, at the size to serve (--height, --width)")
        return None

    def forward(self, x: Tensor, image_sizes: Optional[List[Tuple[int, int]]] = None) -> Dict[str, object]:
        """x (B, 3, H, W) normalised → {"res5": (B, C, N, 1) coarsest tokens, "assign": hierarchy}.

        ``image_sizes`` is accepted for HCFormer's interface; padding gets superpixels of its own.
        """
        out = self.encoder(x)
        tokens = self.norm(out.pooled[:, 1:])  # the class token has no pixels: left out
        return {"res5": tokens.transpose(1, 2)[..., None], "assign": out.hierarchy}

"""SViT-S/B/L: sizes of the released models, feature shapes for any input size, the detectron2
backbones built from MODEL.SVIT.*."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from hcformer.config import add_hcformer_config
from svit import SVIT_VARIANTS, SViT, add_svit_config, svit_classifier

# parameters of the released classifiers (1×1 projection to 1024 + BN + linear head included)
RELEASED_PARAMS = {"small": 25.50e6, "base": 51.70e6, "large": 94.98e6}


def svit_cfg(**svit):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    add_svit_config(cfg)
    for key, value in svit.items():
        setattr(cfg.MODEL.SVIT, key, value)
    return cfg


@pytest.mark.parametrize("variant", sorted(RELEASED_PARAMS))
def test_classifier_params_match_the_released_models(variant: str):
    with torch.device("meta"):  # shapes only
        model = svit_classifier(variant)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(RELEASED_PARAMS[variant], rel=0.01)


def test_small_backbone_params():
    with torch.device("meta"):
        model = SViT()  # SViT-S without the classification head: 23.94M released
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(23.94e6, rel=0.01)


@pytest.mark.parametrize("variant", sorted(SVIT_VARIANTS))
def test_features_of_every_variant_at_an_odd_size(variant: str):
    v = SVIT_VARIANTS[variant]
    torch.manual_seed(0)
    model = SViT(v.embed_dims, v.depths, v.num_heads, layer_scale=v.layer_scale).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 61, 45))
    # stride-2 convs: ceil at every step
    sizes = {"res2": (16, 12), "res3": (8, 6), "res4": (4, 3), "res5": (2, 2)}
    assert {k: tuple(t.shape) for k, t in out.items()} == {
        k: (1, c, *sizes[k]) for k, c in zip(sizes, v.embed_dims)
    }
    assert all(torch.isfinite(t).all() for t in out.values())


def test_classifier_forward_and_layer_scale():
    model = svit_classifier("base").eval()
    block = model.layers[2].blocks[0]
    assert torch.all(block.ls1.gamma == 1e-6) and isinstance(model.layers[1].blocks[0].ls1, torch.nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 40, 40)).shape == (2, 1000)


def test_drop_path_rates_grow_linearly_to_the_configured_rate():
    model = SViT(depths=(1, 1, 1, 1), drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for stage in model.layers for b in stage.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("size", [(64, 64), (37, 53)])
def test_d2_backbone_output_shape_matches_forward(size):
    cfg = svit_cfg(EMBED_DIMS=[16, 32, 48, 64], DEPTHS=[1, 1, 1, 1], NUM_HEADS=[1, 2, 3, 4])
    backbone = BACKBONE_REGISTRY.get("D2SViT")(cfg, ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, *size))
    assert set(out) == {"res2", "res3", "res4", "res5"}  # no hierarchy from the plain backbone
    for name, spec in backbone.output_shape().items():
        assert out[name].shape[1] == spec.channels
        assert out[name].shape[-2:] == tuple(-(-s // spec.stride) for s in size)


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="4 stages"):
        SViT(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="divide"):
        SViT(num_heads=(3, 2, 5, 8))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        SViT(out_features=("res6",))

"""Expedit in HC-Swin: identity without reduction, bias tables, the config hook, HCFormer on CPU."""
import copy
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from timm.models.swin_transformer import get_relative_position_index

from expedit import (
    ExpeditSwinStage,
    add_expedit_config,
    apply_expedit,
    expedite_swin,
    interpolate_rel_pos_bias,
)
from hcformer.config import add_hcformer_config
from hcformer.modeling.backbone.swin import HCSwin

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_swin(window: int = 6) -> HCSwin:
    torch.manual_seed(0)
    return HCSwin(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), window_size=window, emb_dim=16).eval()


def test_rel_pos_bias_interpolation():
    table = torch.randn(23 * 23, 5)  # K = 12, 5 heads
    resized = interpolate_rel_pos_bias(table, 8)
    assert resized.shape == (15 * 15, 5)
    torch.testing.assert_close(interpolate_rel_pos_bias(table, 12), table)  # same size: unchanged
    centre = lambda t, k: t.view(2 * k - 1, 2 * k - 1, -1)[k - 1, k - 1]  # offset (0, 0)
    torch.testing.assert_close(centre(resized, 8), centre(table, 12))
    index = get_relative_position_index(8, 8)  # the layout of the resized table
    assert index.shape == (64, 64) and int(index.max()) == 15 * 15 - 1 and int(index.diagonal().unique()) == 7 * 15 + 7


@pytest.mark.parametrize("image_hw", [(192, 192), (200, 168)])  # window multiples / padded windows
def test_no_reduction_is_the_original_swin(image_hw):
    """k = K: clusters are the tokens, so with one-hot assignments (large t) the expedited
    Swin computes the original one (bias tables, masks and padding included)."""
    model = tiny_swin()
    expedited = expedite_swin(copy.deepcopy(model), stage=2, alpha=5, cluster_window=6, kernel=3, temperature=50.0)
    assert isinstance(expedited.layers[2], ExpeditSwinStage)
    image = torch.randn(1, 3, *image_hw)
    with torch.no_grad():
        want, got = model(image), expedited(image)
    for name in ("res2", "res3", "res4", "res5"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["assign"].assignments[0], want["assign"].assignments[0], rtol=1e-4, atol=1e-4)


def test_reduction_keeps_shapes_and_state_dict():
    model = tiny_swin(window=12)
    expedited = expedite_swin(copy.deepcopy(model), stage=2, alpha=5, cluster_window=8, kernel=7)
    assert expedited.state_dict().keys() == model.state_dict().keys()
    assert expedited.load_state_dict(model.state_dict()).missing_keys == []
    image = torch.randn(1, 3, 256, 224)
    with torch.no_grad():
        want, got = model(image), expedited(image)
    for name in ("res4", "res5"):
        assert got[name].shape == want[name].shape and torch.isfinite(got[name]).all()
    assert expedited.layers[2].last_clustering_macs > 0
    with pytest.raises(ValueError, match="ALPHA"):
        expedite_swin(copy.deepcopy(model), stage=2, alpha=3)  # block 3 is in stage 1


def shapes_cfg():
    cfg = get_cfg()
    add_hcformer_config(cfg)
    add_expedit_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "shapes" / "hcformer_swinT_shapes_expedit.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_config_hook_and_hcformer_forward_on_cpu():
    cfg = shapes_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    reference = copy.deepcopy(model)
    apply_expedit(model, cfg)
    assert isinstance(model.backbone.layers[2], ExpeditSwinStage)
    assert model.backbone.layers[2].first_clustered == 1
    # the same checkpoint loads: nothing added, nothing renamed
    assert model.load_state_dict(reference.state_dict()).missing_keys == []
    image = torch.randint(0, 255, (3, 128, 128)).float()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 128, "width": 128}])
    assert out["sem_seg"].shape == (6, 128, 128) and torch.isfinite(out["sem_seg"]).all()
    assert out["panoptic_seg"][0].shape == (128, 128)

    cfg.MODEL.EXPEDIT.ENABLED = False
    untouched = copy.deepcopy(reference)
    apply_expedit(untouched, cfg)
    assert not any(isinstance(m, ExpeditSwinStage) for m in untouched.modules())


def test_registered_backbone_by_config_only():
    cfg = shapes_cfg()
    cfg.MODEL.BACKBONE.NAME = "ExpeditHCSwinTransformer"
    backbone = build_backbone(cfg)
    assert isinstance(backbone.layers[2], ExpeditSwinStage)
    cfg.MODEL.BACKBONE.NAME = "HCSwinTransformer"
    assert build_backbone(cfg).state_dict().keys() == backbone.state_dict().keys()

"""D2PaCa and D2HCPaCa through detectron2's registry; the HC-PaCa hierarchy and padding; every
config of the project merges, builds and runs one forward."""
from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

from hcformer.modeling.hierarchy import LocalGridHierarchy
from paca.engine import get_paca_cfg
from paca.modeling import D2HCPaCa, D2PaCa

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


def _cfg(backbone: str, **paca):
    cfg = get_paca_cfg()
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.PACA.EMBED_DIMS = [16, 32, 32, 48]
    cfg.MODEL.PACA.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.PACA.NUM_CLUSTERS = [8, 8, 8, 0]
    cfg.MODEL.HC.EMB_DIM = 16
    for key, value in paca.items():
        setattr(cfg.MODEL.PACA, key, value)
    return cfg


def test_d2paca_features():
    backbone = build_backbone(_cfg("D2PaCa"))
    assert isinstance(backbone, D2PaCa)
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (16, 4), "res3": (32, 8), "res4": (32, 16), "res5": (48, 32)
    }
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 64, 96))
    assert "assign" not in out
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 16, 16, 24), "res3": (2, 32, 8, 12), "res4": (2, 32, 4, 6), "res5": (2, 48, 2, 3)
    }


def test_d2paca_out_features_subset():
    cfg = _cfg("D2PaCa", OUT_FEATURES=["res3", "res5"])
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == ["res3", "res5"]
    assert set(backbone.norms) == {"res3", "res5"}


@pytest.mark.parametrize("level", [0, 1, 3])
def test_hc_paca_hierarchy(level):
    cfg = _cfg("D2HCPaCa")
    cfg.MODEL.HC.LEVEL = level
    backbone = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert isinstance(backbone, D2HCPaCa) and len(backbone.clustering_layers) == level
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 128, 96))
    hierarchy = out["assign"]
    assert isinstance(hierarchy, LocalGridHierarchy) and hierarchy.num_levels == level
    # assignment i maps the fine grid of stride 16 / 2^i onto the next coarser one
    grids = [(8, 6), (16, 12), (32, 24)][:level]
    assert [tuple(a.shape) for a in hierarchy.assignments] == [(2, 9, h, w) for h, w in grids]
    for a in hierarchy.assignments:
        torch.testing.assert_close(a.sum(1), torch.ones_like(a[:, 0]))
    decoded = hierarchy.decode(torch.randn(2, 5, 4, 3))  # stride-32 values
    assert decoded.shape == (2, 5) + ((4, 3) if level == 0 else grids[-1])


def test_hc_paca_never_assigns_to_padding():
    torch.manual_seed(0)
    backbone = build_backbone(_cfg("D2HCPaCa")).eval()
    with torch.no_grad():
        hierarchy = backbone(torch.randn(2, 3, 128, 128), image_sizes=[(128, 128), (64, 64)])["assign"]
    # image 1 covers the top-left 2×2 cells of the 4×4 stride-32 grid and 16×16 stride-4 cells
    parents = hierarchy.hard_labels(3)[1, :16, :16]  # its stride-4 pixels' stride-32 clusters
    assert set(parents.unique().tolist()) <= {0, 1, 4, 5}
    # and its soft weights on padding cells are zero: decode an indicator of the padding
    padding = torch.ones(2, 1, 4, 4)
    padding[:, :, :2, :2] = 0
    assert hierarchy.decode(padding)[1, :, :16, :16].abs().max() == 0


def test_paca_clusters_ignore_padding():
    """With image_sizes, every stage's clusters pool image cells only (and plain MHSA keys
    are image cells only)."""
    torch.manual_seed(0)
    backbone = build_backbone(_cfg("D2PaCa", NUM_CLUSTERS=[8, 8, 8, 8])).eval()
    assignments = []
    for stage in backbone.vit.stages:
        stage.blocks[0].attn.register_forward_hook(lambda m, args, out: assignments.append(args[1]))
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 64), image_sizes=[(64, 32)])  # the right half is padding
    for a, (h, w) in zip(assignments, [(16, 16), (8, 8), (4, 4), (2, 2)]):
        a = a.reshape(1, 8, h, w)
        assert (a[..., w // 2 :] == 0).all() and (a[..., : w // 2] > 0).all()


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_builds_and_runs(path: Path):
    cfg = get_paca_cfg()
    cfg.merge_from_file(str(path))  # raises on a key neither project defines
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.BACKBONE.NAME in ("D2PaCa", "D2HCPaCa")
    assert (cfg.MODEL.BACKBONE.NAME == "D2HCPaCa") == (cfg.MODEL.META_ARCHITECTURE == "HCFormer")
    if "ade20k" in path.parts:
        assert list(cfg.MODEL.PACA.NUM_CLUSTERS) == [200, 200, 200, 0]
    model = build_model(cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 64, 80) * 255, "height": 32, "width": 40}])
    assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 32, 40)

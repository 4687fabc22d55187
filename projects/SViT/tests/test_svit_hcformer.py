"""HC-SViT inside HCFormer: the hierarchy it returns, the project's configs, a short training."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model

from hcformer.config import add_hcformer_config
from hcformer.modeling.hierarchy import LocalGridHierarchy
from svit import add_svit_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
TINY = dict(EMBED_DIMS=[16, 32, 48, 64], DEPTHS=[1, 1, 1, 1], NUM_HEADS=[1, 2, 3, 4])


def project_cfg(path=None):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    add_svit_config(cfg)
    if path is not None:
        cfg.merge_from_file(str(path))
    return cfg


def tiny_hc_svit(level: int = 3, aux: str = "none"):
    cfg = project_cfg()
    for key, value in TINY.items():
        setattr(cfg.MODEL.SVIT, key, value)
    cfg.MODEL.HC.LEVEL = level
    cfg.MODEL.HC.EMB_DIM = 16
    cfg.MODEL.RESNETS.AUX = aux
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.HC.AUX_ENCODER_LAYERS = 1
    return BACKBONE_REGISTRY.get("D2HCSViT")(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("level", [0, 1, 3])
def test_hierarchy_of_hc_svit(level: int):
    torch.manual_seed(0)
    backbone = tiny_hc_svit(level).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 96))
    hierarchy = out["assign"]
    assert isinstance(hierarchy, LocalGridHierarchy) and hierarchy.num_levels == level
    assert hierarchy.grid_sizes() == [(2, 3), (4, 6), (8, 12), (16, 24)][: level + 1]
    for a in hierarchy.assignments:
        torch.testing.assert_close(a.sum(1), torch.ones(2, *a.shape[-2:]))
    # decoding constants through soft assignments that sum to one keeps them
    masks = torch.ones(2, 5, 2, 3)
    decoded = hierarchy.decode(masks)
    assert decoded.shape == (2, 5, 16 // 2 ** (3 - level), 24 // 2 ** (3 - level))
    torch.testing.assert_close(decoded, torch.ones_like(decoded))
    labels = hierarchy.hard_labels(level, output_size=(64, 96))
    assert labels.shape[-2:] == (64, 96) and labels.max() < 6  # (batch 1 without assignments)


def test_padding_cells_are_never_cluster_candidates():
    torch.manual_seed(0)
    backbone = tiny_hc_svit(3).eval()
    with torch.no_grad():
        hierarchy = backbone(torch.randn(2, 3, 64, 64), image_sizes=[(64, 64), (30, 64)])["assign"]
    # image 2 covers rows [0, 30): stride-32 row 1, stride-16 rows >= 2, stride-8 rows >= 4 are padding
    for a, stride in zip(hierarchy.assignments, (32, 16, 8)):
        rows = torch.arange(a.shape[-2])
        # candidate dy = +1 of a pixel whose parent row is i is row i + 1
        parent = rows // 2
        pad_below = (parent + 1) * stride >= 30
        assert torch.all(a[1, 6:9][:, pad_below] == 0)  # dy = +1 candidates (offsets 6..8)
        # image 1 has no padding: its dy = +1, dx = 0 candidate (offset 7) is used wherever
        # that cell exists
        inside = parent + 1 < a.shape[-2] // 2
        assert torch.all(a[0, 7][inside] > 0)


def test_aux_encoder_on_res5():
    backbone = tiny_hc_svit(3, aux="transformer").eval()
    assert backbone.output_shape()["res5"].channels == 32
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 32, 2, 2)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_project_config_builds_and_runs_one_inference(path: Path):
    cfg = project_cfg(path)
    assert cfg.MODEL.BACKBONE.NAME == "D2HCSViT" and list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES) == ["res5", "assign"]
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == cfg.MODEL.SVIT.EMBED_DIMS[-1]
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    height, width = 64, 96
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    with torch.no_grad():
        (outputs,) = model([{"image": image, "height": height, "width": width}])
    if cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON:
        assert outputs["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, height, width)
        assert torch.isfinite(outputs["sem_seg"]).all()
    if cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON:
        assert outputs["panoptic_seg"][0].shape == (height, width)


def test_training_on_shapes(tmp_path: Path):
    """Two iterations of HCFormer's Trainer with the tiny HC-SViT, then the final evaluation."""
    pytest.importorskip("hcformer.data.build")
    from hcformer_shapes import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    spec = ShapesSpec(image_size=64, num_train=4, num_val=2)
    register_shapes_datasets(str(tmp_path / "datasets"), spec, prefix="svit_shapes", replace=True)
    cfg = project_cfg(CONFIG_DIR / "shapes/hcformer_svit_tiny_shapes.yaml")
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", ("svit_shapes_train_panoptic_with_sem_seg",),
            "DATASETS.TEST", ("svit_shapes_val_panoptic_with_sem_seg",),
            "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64,
            "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2, "SOLVER.STEPS", (),
            "MODEL.MASK_FORMER.DEC_LAYERS", 2, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
            "DATALOADER.NUM_WORKERS", 0, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
        ]
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items() if "attn.mhsa" in k}
    trainer.train()

    after = trainer.model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the STA was trained
    assert (tmp_path / "model_final.pth").is_file()
    assert {"panoptic_seg", "sem_seg", "segm"} <= set(trainer._last_eval_results)


def test_train_net_setup_knows_the_svit_keys(tmp_path: Path):
    import importlib.util

    from detectron2.engine import default_argument_parser

    from hcformer.engine.setup import setup

    # loading the script imports svit, which registers MODEL.SVIT.* with every setup
    spec = importlib.util.spec_from_file_location("svit_train_net", CONFIG_DIR.parent / "train_net.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    args = default_argument_parser().parse_args(
        ["--config-file", str(CONFIG_DIR / "shapes/hcformer_svit_tiny_shapes.yaml"), "OUTPUT_DIR", str(tmp_path),
         "MODEL.SVIT.N_ITER", "2"]
    )
    cfg = setup(args)
    assert cfg.is_frozen() and cfg.MODEL.SVIT.N_ITER == 2 and cfg.MODEL.BACKBONE.NAME == "D2HCSViT"
    assert (tmp_path / "config.yaml").is_file()

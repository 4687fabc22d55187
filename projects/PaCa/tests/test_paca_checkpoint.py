"""Loading with a changed number of clusters (100 → 200 as on ADE20K), classifier weights as a
backbone, and the clustering LR multiplier."""
import logging
from pathlib import Path

import numpy as np
import torch
from detectron2.modeling import build_model

from paca.checkpoint import (
    PaCaCheckpointer,
    classifier_to_backbone,
    drop_changed_cluster_projections,
    is_paca_classifier,
)
from paca.engine import PaCaTrainer, get_paca_cfg, scale_cluster_projection_lr
from paca.modeling import paca_classifier


def _model(num_clusters, teacher: bool = False, meta: str = "SemanticSegmentor"):
    cfg = get_paca_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.MODEL.BACKBONE.NAME = "D2PaCa"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "PaCaSegHead"
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.PACA.EMBED_DIMS = [16, 16, 32, 32]
    cfg.MODEL.PACA.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.PACA.NUM_CLUSTERS = list(num_clusters)
    cfg.MODEL.PACA.TEACHER.ENABLED = teacher
    cfg.MODEL.PACA.TEACHER.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.DEVICE = "cpu"
    return cfg, build_model(cfg)


def test_function_leaves_out_only_changed_cluster_projections():
    _, old = _model([4, 4, 4, 0])
    _, new = _model([8, 4, 8, 0])
    state = {k: v.numpy() if "res5" in k else v for k, v in old.state_dict().items()}  # numpy too
    kept, changes = drop_changed_cluster_projections(state, new.state_dict())
    assert [(c.checkpoint_clusters, c.model_clusters) for c in changes] == [(4, 8), (4, 8)]
    assert {c.key for c in changes} == {
        "backbone.vit.stages.0.blocks.0.clustering.to_clusters.weight",
        "backbone.vit.stages.2.blocks.0.clustering.to_clusters.weight",
    }
    assert set(kept) == set(state) - {c.key for c in changes}
    assert "8 in the model" in str(changes[0])


def test_checkpointer_loads_a_model_with_more_clusters(tmp_path: Path, caplog):
    torch.manual_seed(0)
    _, trained = _model([4, 4, 4, 0])
    torch.save({"model": trained.state_dict()}, tmp_path / "m100.pth")
    _, finetuned = _model([8, 8, 8, 0])
    fresh = {k: v.clone() for k, v in finetuned.state_dict().items()}

    checkpointer = PaCaCheckpointer(finetuned)
    with caplog.at_level(logging.WARNING):
        checkpointer.load(str(tmp_path / "m100.pth"))  # no size-mismatch error

    assert len(checkpointer.cluster_count_changes) == 3
    reported = {c.key for c in checkpointer.cluster_count_changes}
    assert all(key in caplog.text for key in reported)
    loaded, old = finetuned.state_dict(), trained.state_dict()
    for key, value in loaded.items():
        expected = fresh[key] if key in reported else old[key]
        torch.testing.assert_close(value, expected, msg=key)


def test_checkpointer_handles_the_teacher_heads(tmp_path: Path):
    _, trained = _model([4, 4, 4, 4], teacher=True)
    torch.save({"model": trained.state_dict()}, tmp_path / "ec.pth")
    _, finetuned = _model([6, 6, 6, 6], teacher=True)
    checkpointer = PaCaCheckpointer(finetuned)
    checkpointer.load(str(tmp_path / "ec.pth"))
    assert {c.key for c in checkpointer.cluster_count_changes} == {
        f"backbone.vit.teacher.heads.{i}.to_clusters.weight" for i in range(4)
    }


def test_classifier_weights_load_as_backbone(tmp_path: Path):
    torch.manual_seed(0)
    classifier = paca_classifier("tiny", dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_clusters=(4, 4, 4, 0))
    state = classifier.state_dict()
    assert is_paca_classifier(state)
    converted = classifier_to_backbone(state)
    assert "backbone.norms.res5.weight" in converted and not any("head" in k for k in converted)
    torch.save({"model": state}, tmp_path / "in1k.pth")

    _, model = _model([8, 4, 4, 0])  # M of stage 1 changed too
    result = PaCaCheckpointer(model)._load_model(torch.load(tmp_path / "in1k.pth", weights_only=True))
    backbone_missing = [k for k in result.missing_keys if k.startswith("backbone.")]
    # everything of the backbone is loaded but its other norms (not in a classifier) and the
    # re-initialised stage-1 projection
    assert sorted(backbone_missing) == sorted(
        [f"backbone.norms.res{i}.{p}" for i in (2, 3, 4) for p in ("weight", "bias")]
        + ["backbone.vit.stages.0.blocks.0.clustering.to_clusters.weight"]
    )
    torch.testing.assert_close(model.backbone.vit.stem[0].weight, classifier.stem[0].weight)


def test_clustering_lr_multiplier():
    cfg, model = _model([4, 4, 4, 0])
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.MODEL.PACA.CLUSTERING_LR_MULTIPLIER = 10.0
    optimizer = PaCaTrainer.build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert np.isclose(lr_of[id(named["backbone.vit.stages.1.blocks.0.clustering.to_clusters.weight"])], 1e-3)
    assert np.isclose(lr_of[id(named["backbone.vit.stages.1.blocks.0.clustering.pw.weight"])], 1e-4)
    assert np.isclose(lr_of[id(named["sem_seg_head.to_clusters.weight"])], 1e-3)
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())  # each once
    assert scale_cluster_projection_lr(optimizer, model, 1.0) == 0

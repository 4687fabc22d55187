"""Every model config of configs/ builds and runs one inference on a tiny CPU image."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import hcformer  # noqa: F401  registers the model and the datasets' metadata
from hcformer.config import add_hcformer_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("Base-"))


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_runs_one_inference(path: Path):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()

    height, width = 64, 96
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    with torch.no_grad():
        (outputs,) = model([{"image": image, "height": height, "width": width}])

    test = cfg.MODEL.MASK_FORMER.TEST
    if test.SEMANTIC_ON:
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        assert outputs["sem_seg"].shape == (num_classes, height, width)
        assert torch.isfinite(outputs["sem_seg"]).all()
    if test.PANOPTIC_ON:
        assert outputs["panoptic_seg"][0].shape == (height, width)
    if test.INSTANCE_ON:
        instances = outputs["instances"]
        assert instances.image_size == (height, width)
        assert instances.pred_masks.shape[1:] == (height, width)
    assert set(outputs) == {
        key
        for key, on in [
            ("sem_seg", test.SEMANTIC_ON),
            ("panoptic_seg", test.PANOPTIC_ON),
            ("instances", test.INSTANCE_ON),
            # HierarchyEvaluator's input: every level's and the queries' clustering of this forward
            ("clusterings", cfg.TEST.HIERARCHY_EVAL),
            ("level_strides", cfg.TEST.HIERARCHY_EVAL),
        ]
        if on
    }
    if cfg.TEST.HIERARCHY_EVAL:
        levels = len(model.backbone.clustering_layers) if hasattr(model.backbone, "clustering_layers") else None
        assert "queries" in outputs["clusterings"]
        assert all(ids.shape == (height, width) for ids in outputs["clusterings"].values())
        if levels is not None:
            assert len(outputs["clusterings"]) == levels + 2

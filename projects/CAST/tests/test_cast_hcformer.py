"""HCFormer on CAST: the registered parts build from a config, train end to end on the tiny
shapes set, and the hierarchy tools (clusterings, UE / ASA, the visualiser) work on it."""
import json
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import cast
from cast.hierarchy import CASTHierarchy
from hcformer.config import add_hcformer_config

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG = PROJECT_DIR / "configs/shapes/hcformer_cast_tiny_shapes.yaml"


def _cfg(*opts):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cast.add_cast_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", 2, *opts])
    return cfg


def _inputs():
    from detectron2.structures import BitMasks, Instances

    inputs = []
    for width in (96, 112):  # different sizes: padding and per-image superpixels
        image = torch.randint(0, 256, (3, 128, width)).float()
        image[:, 20:60, 20:60] = 255.0
        masks = torch.zeros(2, 128, width, dtype=torch.bool)
        masks[0, 20:60, 20:60] = True
        masks[1, 80:] = True
        instances = Instances((128, width), gt_classes=torch.tensor([0, 5]), gt_masks=BitMasks(masks))
        inputs.append({"image": image, "instances": instances, "height": 128, "width": width})
    return inputs


@pytest.mark.parametrize("decode_stride", [8, 1])
def test_model_trains_and_predicts_through_the_cast_hierarchy(decode_stride):
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.CAST.DECODE_STRIDE", decode_stride))
    losses = model(_inputs())
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    # the decoder's masks reach the graph pooling through the decoded assignments
    assert model.backbone.encoder.pools[-1].refine_attn.qkv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        outputs = model(_inputs())
    assert outputs[1]["sem_seg"].shape == (6, 128, 112)
    assert outputs[0]["panoptic_seg"][0].shape == (128, 96)
    images = model.preprocess(_inputs())
    hierarchy = model.backbone(images.tensor)["assign"]
    H, W = images.tensor.shape[-2:]  # the padded batch
    assert hierarchy.decode(torch.zeros(2, 1, 8, 1)).shape[-2:] == (H // decode_stride, W // decode_stride)


def test_clusterings_and_undersegmentation_on_a_cast_hierarchy():
    from hcformer.evaluation import undersegmentation_error

    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    inputs = _inputs()
    with torch.no_grad():
        _, hierarchy = model.run(model.preprocess(inputs))
        outputs = model(inputs, clusterings="all")
    assert isinstance(hierarchy, CASTHierarchy)
    for x, output in zip(inputs, outputs):
        maps = output["clusterings"]
        assert output["level_strides"][1] is None  # segments, not grid cells
        assert set(maps) == {f"level{k}" for k in range(hierarchy.num_levels + 1)} | {"queries"}
        assert all(m.shape == (128, x["width"]) for m in maps.values())
        gt = x["instances"].gt_masks.tensor.long().argmax(0)
        errors = [undersegmentation_error(gt.numpy(), maps[f"level{k}"].numpy()) for k in range(4)]
        assert errors == sorted(errors)  # coarser nested levels leak at least as much


def _load_tool(name: str, tools_dir: Path = PROJECT_DIR / "tools"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, tools_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_trainer_runs_on_shapes_and_the_visualiser_and_level_scores_work(tmp_path: Path):
    pytest.importorskip("hcformer.data.build")
    from hcformer_shapes import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    spec = ShapesSpec(image_size=64, num_train=4, num_val=2)
    register_shapes_datasets(str(tmp_path / "datasets"), spec, prefix="cast_shapes", replace=True)
    cfg = _cfg(
        "DATASETS.TRAIN", ("cast_shapes_train_panoptic_with_sem_seg",),
        "DATASETS.TEST", ("cast_shapes_val_panoptic_with_sem_seg",),
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.STEPS", (),
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path),
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # 3 iterations, then the final evaluation
    assert (tmp_path / "model_final.pth").is_file()
    assert {"panoptic_seg", "sem_seg"} <= set(trainer._last_eval_results)

    # the repository's visualiser imports this project itself: the config lies under projects/CAST
    summary = _load_tool("visualize_hierarchy", PROJECT_DIR.parents[1] / "tools").main([
        "--config-file", str(CONFIG), "--dataset", "cast_shapes_val_panoptic_with_sem_seg", "--num-images", "1",
        "--output", str(tmp_path / "vis"), "--json", str(tmp_path / "vis.json"),
        "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    ])
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
    assert "level4" in json.loads((tmp_path / "vis.json").read_text())["mean"]
    assert summary["mean"]

    levels = _load_tool("evaluate_cast_levels").main([
        "--config-file", str(CONFIG), "--dataset", "cast_shapes_val_panoptic_with_sem_seg",
        "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    ])
    ue = [levels[f"UE_level{k}"] for k in range(1, 5)]  # superpixels, then 3 graph poolings
    assert all(0 <= u <= 1 for u in ue) and ue == sorted(ue)  # nested: coarser leaks more
    assert all(1 - levels[f"UE_level{k}"] <= levels[f"ASA_level{k}"] + 1e-9 <= 1 + 1e-9 for k in range(1, 5))


def test_ade20k_config_builds_and_runs_one_forward():
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cast.add_cast_config(cfg)
    cfg.merge_from_file(str(PROJECT_DIR / "configs/ade20k/semantic-segmentation/hcformer_cast_small_bs16_160k.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", 2, "DATASETS.TRAIN", ()])
    model = build_model(cfg).eval()
    assert model.backbone.encoder.num_tokens == [320, 160, 80, 40]
    with torch.no_grad():  # 64² → 16 superpixels: every pooling keeps what there is
        out = model([{"image": torch.randint(0, 256, (3, 64, 64)).float()}])
    assert out[0]["sem_seg"].shape == (150, 64, 64)

"""HC-Swin backbone: equivalence with timm's Swin, any input size, padding, clustering levels,
the original HCFormer Swin-S parameter count, converters, and a few training iterations of the
Swin shapes config. The released HCFormer+ Swin-L checkpoint: tests/test_swin_released_checkpoint.py."""
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    get_relative_position_index,
)

from hcformer.checkpoint import HCFormerCheckpointer, convert_swin_state_dict
from hcformer.config import add_hcformer_config
from hcformer.modeling.backbone.swin import HCSwin, SwinBlock, shifted_window_mask

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# a Swin small enough for CPU tests; maps of 64/32/16/8 tokens at 256 px tile windows of 4
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)


def _tiny_timm_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=256, patch_size=4, num_classes=10, drop_path_rate=0.0, **TINY).eval()


def _as_official_release(timm_state):
    """timm's Swin state dict in the official release's layout: patch merging at the end of the
    previous stage, a relative position index per block, attention masks, ``head.*``."""
    out = {}
    for key, value in timm_state.items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample.", f"layers.{stage - 1}.downsample.")
        out[key.replace("head.fc.", "head.")] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = get_relative_position_index(4, 4)
            out[key.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(16, 16, 16)
    return out


def _load_cfg(path: Path, *opts):
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the backbone
@pytest.mark.parametrize("layout", ["timm", "official"])
def test_converted_imagenet_swin_computes_timms_features(layout):
    """On maps that are window multiples, our blocks compute timm's Swin (same weights)."""
    reference = _tiny_timm_swin()
    state = reference.state_dict() if layout == "timm" else _as_official_release(reference.state_dict())
    converted = convert_swin_state_dict(state, prefix="")
    backbone = HCSwin(**TINY, drop_path_rate=0.0, level=3).eval()
    result = backbone.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".clustering." in k for k in result.missing_keys)

    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ours = backbone(x)
        y = reference.patch_embed(x)
        for k, stage in enumerate(reference.layers):  # timm: (patch merging,) blocks
            y = stage(y)
            expected = reference.norm(y) if k == 3 else y
            torch.testing.assert_close(ours[f"res{k + 2}"], expected.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-4)


def test_block_pads_then_shifts_like_the_original_detection_swin():
    """On a map that is not a window multiple, our block computes what a Swin block computes on
    the map zero-padded after norm1 (the original pads, then rolls the padded map). With a zero
    norm1 bias, zero tokens stay zero through norm1, so timm's block on the padded input shows it."""
    torch.manual_seed(0)
    reference = SwinTransformerBlock(8, input_resolution=(12, 16), num_heads=2, window_size=4, shift_size=2).eval()
    with torch.no_grad():
        reference.norm1.weight.uniform_(0.5, 1.5)
        reference.norm1.bias.zero_()
    block = SwinBlock(8, num_heads=2, window_size=4, shift=2).eval()
    block.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(2, 10, 13, 8)
    mask = shifted_window_mask(12, 16, 4, 2)
    with torch.no_grad():
        ours = block(x, mask)
        padded = reference(F.pad(x, (0, 0, 0, 3, 0, 2)))[:, :10, :13]
        rolled_first = reference(x)  # timm's own order: roll the 10x13 map, then pad it
    torch.testing.assert_close(ours, padded)
    assert not torch.allclose(ours, rolled_first, atol=1e-3)


def test_patch_merging_concatenates_like_the_original_swin():
    """timm's PatchMerging orders the 2x2 neighbours (0,0), (1,0), (0,1), (1,1) as (row, col)."""
    torch.manual_seed(0)
    merging = PatchMerging(8).eval()
    x = torch.randn(2, 6, 10, 8)
    parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
    expected = merging.reduction(merging.norm(torch.cat(parts, dim=-1)))
    torch.testing.assert_close(merging(x), expected)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_any_input_size_and_clustering_level(level):
    backbone = HCSwin(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, level=level).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 50, 70))  # neither patch nor window multiples
    sizes = {"res2": (13, 18), "res3": (7, 9), "res4": (4, 5), "res5": (2, 3)}
    for name, (h, w) in sizes.items():
        assert out[name].shape == (1, 16 * 2 ** (int(name[-1]) - 2), h, w), name
    hierarchy = out["assign"]
    assert hierarchy.num_levels == level
    assert [tuple(a.shape[-2:]) for a in hierarchy.assignments] == [(4, 5), (7, 9), (13, 18)][:level]
    for a in hierarchy.assignments:
        torch.testing.assert_close(a.sum(1), torch.ones_like(a[:, 0]))
    assert hierarchy.decode(torch.randn(1, 3, 2, 3)).shape[-2:] == [(2, 3), (4, 5), (7, 9), (13, 18)][level]
    names = sorted(k for k in backbone.state_dict() if k.endswith(".clustering.temp"))
    assert names == [f"layers.{k}.clustering.temp" for k in range(3 - level, 3)]
    assert len(backbone.clustering_layers) == level


def test_padding_cells_are_never_candidates(make_cfg):
    cfg = make_cfg(**{"MODEL.BACKBONE.NAME": "HCSwinTransformer", "MODEL.SWIN.EMBED_DIM": 16,
                      "MODEL.SWIN.DEPTHS": [2, 2, 2, 2], "MODEL.SWIN.NUM_HEADS": [1, 2, 2, 4]})
    model = build_model(cfg).eval()
    images = model.preprocess([{"image": torch.rand(3, 64, 96) * 255}, {"image": torch.rand(3, 40, 50) * 255}])
    with torch.no_grad():
        feats = model.backbone(images.tensor, image_sizes=images.image_sizes)
    coarsest = feats["assign"].assignments[0]  # (B, 9, 4, 6): stride-16 pixels → stride-32 cells
    # image 2 is 40x50: stride-32 cells of column 2 start at x = 64, in the padding; the pixels
    # whose parent is in column 1 give zero weight to their dx = +1 candidates
    assert torch.all(coarsest[1, [2, 5, 8], :2, 2:4] == 0)
    assert torch.all(coarsest[0, [5, 8], :2, 2:4] > 0)  # (dy = -1 is above row 0)


def test_emb_dim_and_temperature_are_honoured():
    backbone = HCSwin(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), emb_dim=24, init_scale=0.3)
    for layer in backbone.clustering_layers:
        assert layer.fine_emb.weight.shape[0] == layer.coarse_emb.weight.shape[0] == 24
        assert layer.temp.item() == pytest.approx(0.3)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_hc_config_keys_reach_the_swin_clusterings(make_cfg, level):
    """MODEL.HC.EMB_DIM / TEMPERATURE / LEVEL through the config and the backbone registry, as
    train_net.py builds the model (the original's Swin ignored the first two)."""
    from detectron2.modeling import build_backbone

    cfg = make_cfg(**{"MODEL.BACKBONE.NAME": "HCSwinTransformer", "MODEL.SWIN.EMBED_DIM": 16,
                      "MODEL.SWIN.DEPTHS": [2, 2, 2, 2], "MODEL.SWIN.NUM_HEADS": [1, 2, 2, 4],
                      "MODEL.HC.EMB_DIM": 24, "MODEL.HC.TEMPERATURE": 0.3, "MODEL.HC.LEVEL": level})
    backbone = build_backbone(cfg)
    assert isinstance(backbone, HCSwin) and len(backbone.clustering_layers) == level
    # the L coarsest pairs, coarsest first: stage k's output (16·2^k channels) with stage k+1's input
    for layer, stage in zip(backbone.clustering_layers, range(2, 2 - level, -1)):
        assert tuple(layer.fine_emb.weight.shape) == (24, 16 * 2**stage, 1, 1)
        assert tuple(layer.coarse_emb.weight.shape) == (24, 32 * 2**stage, 1, 1)
        assert layer.temp.item() == pytest.approx(0.3)
    with torch.no_grad():
        hierarchy = backbone(torch.randn(1, 3, 64, 64))["assign"]
    assert hierarchy.num_levels == level


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = HCSwin(**TINY, drop_path_rate=0.0).train()
    checkpointed = HCSwin(**TINY, drop_path_rate=0.0, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for model in (plain, checkpointed):
        out = model(x)
        (out["res5"].square().mean() + out["assign"].assignments[-1].square().mean()).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


# ------------------------------------------------------------------ original configs
def test_hcformer_swin_small_has_the_original_parameter_count():
    path = CONFIGS / "coco/panoptic-segmentation/swin/hcformer_swin_small_bs16_50ep.yaml"
    model = build_model(_load_cfg(path))
    # the original's count for this config (its Swin clustering used 128 embedding channels,
    # the MODEL.HC.EMB_DIM default that this config keeps)
    assert sum(p.numel() for p in model.parameters()) == 62_406_867


def test_released_config_keeps_the_original_evaluation_period():
    """The original evaluates its 1.475M-iteration COCO panoptic Swin-L+ run every 200k
    iterations, not every 5000 as the shorter R50 schedules (tests/test_swin_released_checkpoint.py
    runs the released checkpoint with this config)."""
    path = CONFIGS / "coco/panoptic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_200ep.yaml"
    cfg = _load_cfg(path)
    assert cfg.TEST.EVAL_PERIOD == 200000 and cfg.SOLVER.MAX_ITER == 1475000


# ------------------------------------------------------------------ converters
def test_swin_converter_writes_weights_the_checkpointer_loads(tmp_path, capsys, make_cfg):
    reference = _tiny_timm_swin()
    torch.save({"model": _as_official_release(reference.state_dict())}, tmp_path / "swin_official.pth")
    tool = _tool("convert-pretrained-swin-model-to-d2")
    assert tool.main([str(tmp_path / "swin_official.pth"), str(tmp_path / "swin.pkl")]) == 0
    report = capsys.readouterr().out
    assert "EMBED_DIM 16" in report and "WINDOW_SIZE 4" in report and "DEPTHS [2, 2, 2, 2]" in report
    assert "missing (the model has them, the file does not): 0" in report
    assert "unexpected (the file has them, the model does not): 0" in report
    with open(tmp_path / "swin.pkl", "rb") as f:
        written = pickle.load(f)["model"]
    assert "backbone.norm3.weight" in written and not any(k.startswith("backbone.head") for k in written)

    cfg = make_cfg(**{"MODEL.BACKBONE.NAME": "HCSwinTransformer", "MODEL.SWIN.EMBED_DIM": 16,
                      "MODEL.SWIN.DEPTHS": [2, 2, 2, 2], "MODEL.SWIN.NUM_HEADS": [1, 2, 2, 4],
                      "MODEL.SWIN.WINDOW_SIZE": 4})
    for weights in ("swin.pkl", "swin_official.pth"):  # converted, or converted on the fly
        model = build_model(cfg)
        # a .pkl is read only when pickles are allowed explicitly
        HCFormerCheckpointer(model, allow_pickle=weights.endswith(".pkl")).load(str(tmp_path / weights))
        torch.testing.assert_close(model.backbone.norm3.weight, reference.norm.weight)
        torch.testing.assert_close(model.backbone.layers[0].downsample.reduction.weight,
                                   reference.layers[1].downsample.reduction.weight)


def test_converters_refuse_files_of_the_wrong_kind(tmp_path, capsys):
    import torchvision

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    torch.save(_tiny_timm_swin().state_dict(), tmp_path / "swin.pth")
    swin_tool, resnet_tool = _tool("convert-pretrained-swin-model-to-d2"), _tool("convert-torchvision-to-d2")
    for tool, source in ((swin_tool, "notes.pth"), (swin_tool, "r18.pth"), (resnet_tool, "swin.pth"),
                         (resnet_tool, "missing.pth")):
        assert tool.main([str(tmp_path / source), str(tmp_path / "out.pkl")]) == 2, source
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out.pkl").exists()


def test_converters_refuse_files_with_the_right_names_but_another_architecture(tmp_path, capsys):
    """Files that pass the first key check (Swin or ResNet names) but are no usable Swin (v1) or
    ResNet: one error line naming the file and what was expected, exit code 2, nothing written."""
    import torchvision
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    torch.manual_seed(0)
    three_stages = SwinTransformer(img_size=64, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=4)
    torch.save({"model": _as_official_release(three_stages.state_dict())}, tmp_path / "swin_3_stages.pth")
    v2 = SwinTransformerV2(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
    torch.save(v2.state_dict(), tmp_path / "swinv2.pth")
    no_table = _as_official_release(_tiny_timm_swin().state_dict())
    del no_table["layers.0.blocks.0.attn.relative_position_bias_table"]
    torch.save({"model": no_table}, tmp_path / "swin_no_bias_table.pth")
    r18 = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: v for k, v in r18.items() if not k.startswith("layer4.")}, tmp_path / "r18_3_stages.pth")

    swin_tool, resnet_tool = _tool("convert-pretrained-swin-model-to-d2"), _tool("convert-torchvision-to-d2")
    cases = [
        (swin_tool, "swin_3_stages.pth", "expected blocks in 4 stages (layers.0-3.blocks.*), found stages [0, 1, 2]"),
        (swin_tool, "swinv2.pth", "a Swin Transformer V2 state dict (layers.0.blocks.0.attn.logit_scale)"),
        (swin_tool, "swin_no_bias_table.pth", "no layers.0.blocks.0.attn.relative_position_bias_table"),
        (resnet_tool, "r18_3_stages.pth", "basic blocks [2, 2, 2, 0] per stage match no ResNet depth"),
    ]
    for tool, source, reason in cases:
        for output in ("out.pkl", "out.pth"):
            assert tool.main([str(tmp_path / source), str(tmp_path / output)]) == 2, source
            captured = capsys.readouterr()
            assert captured.out == ""  # no report of a half-converted file
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / source} is not a usable ImageNet ")
            assert reason in lines[0] and "Expected " in lines[0] and f"{tmp_path / output} not written" in lines[0]
    assert not (tmp_path / "out.pkl").exists() and not (tmp_path / "out.pth").exists()


def test_converters_say_how_to_load_what_they_wrote(tmp_path, capsys):
    """A .pkl output is refused by training unless pickles are allowed: the hint says so; a .pth
    output needs no flag."""
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    torch.save(_tiny_timm_swin().state_dict(), tmp_path / "swin.pth")
    for tool, source in ((_tool("convert-torchvision-to-d2"), "r18.pth"),
                         (_tool("convert-pretrained-swin-model-to-d2"), "swin.pth")):
        assert tool.main([str(tmp_path / source), str(tmp_path / "weights.pkl")]) == 0
        hint = capsys.readouterr().out.strip().splitlines()[-1]
        assert hint.startswith(f"use: MODEL.WEIGHTS {tmp_path / 'weights.pkl'} MODEL.ALLOW_PICKLE True")
        assert "HCFORMER_ALLOW_PICKLE=1" in hint and ".pth" in hint
        assert tool.main([str(tmp_path / source), str(tmp_path / "weights.pth")]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == f"use: MODEL.WEIGHTS {tmp_path / 'weights.pth'}"


def test_torchvision_converter_matches_every_resnet_key(tmp_path, capsys):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    tool = _tool("convert-torchvision-to-d2")
    assert tool.main([str(tmp_path / "r18.pth"), str(tmp_path / "r18_hc.pth")]) == 0
    report = capsys.readouterr().out
    assert "ResNet-18" in report and "matched: 100 tensors" in report
    written = torch.load(tmp_path / "r18_hc.pth", weights_only=True)["model"]
    torch.testing.assert_close(written["backbone.layer4.1.bn2.running_var"], tv.layer4[1].bn2.running_var)
    assert "backbone.stem.0.weight" in written and not any(".fc." in k for k in written)


# ------------------------------------------------------------------ training on shapes
# the shapes config is Swin-T at half width with 2 blocks per stage; Swin-T itself trains too
SWIN_T = ("MODEL.SWIN.EMBED_DIM", 96, "MODEL.SWIN.DEPTHS", [2, 2, 6, 2], "MODEL.SWIN.WINDOW_SIZE", 7)


@pytest.mark.parametrize("swin", [(), SWIN_T], ids=["shapes config", "Swin-T"])
def test_swin_shapes_config_trains(tmp_path, swin):
    from hcformer_shapes import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    register_shapes_datasets(str(tmp_path), ShapesSpec(image_size=64, num_train=4, num_val=1),
                             prefix="swin_shapes", replace=True)
    cfg = _load_cfg(
        CONFIGS / "shapes/panoptic-segmentation/hcformer_swinT_shapes.yaml",
        "DATASETS.TRAIN", ("swin_shapes_train_panoptic_with_sem_seg",), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (64,), "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
        "MODEL.MASK_FORMER.DEC_LAYERS", 2, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256, *swin,
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if swin:  # Swin-T's channels and blocks
        assert model.backbone.output_shape()["res5"].channels == 768
        assert [len(layer.blocks) for layer in model.backbone.layers] == [2, 2, 6, 2]
    optimizer = Trainer.build_optimizer(cfg, model)
    batches = iter(Trainer.build_train_loader(cfg))
    scales = [layer.temp for layer in model.backbone.clustering_layers]
    before = torch.cat(scales).detach().clone()
    for _ in range(3):
        losses = model(next(batches))
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in scales)
        optimizer.step()
    assert "loss_scale_reg" in losses
    assert not torch.equal(torch.cat(scales).detach(), before)

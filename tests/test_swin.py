"""HC-Swin backbone: equivalence with timm's Swin, any input size, padding, clustering levels,
the original checkpoint layouts (HCFormer Swin-S, the released HCFormer+ Swin-L), converters,
and a few training iterations of the Swin shapes config."""
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


# ------------------------------------------------------------------ original checkpoint layouts
def test_hcformer_swin_small_has_the_original_parameter_count():
    path = CONFIGS / "coco/panoptic-segmentation/swin/hcformer_swin_small_bs16_50ep.yaml"
    model = build_model(_load_cfg(path))
    # the original's count for this config (its Swin clustering used 128 embedding channels,
    # the MODEL.HC.EMB_DIM default that this config keeps)
    assert sum(p.numel() for p in model.parameters()) == 62_406_867


def _released_hcformer_plus_swin_large_layout():
    """{key: shape} of the released HCFormer+ Swin-L COCO panoptic checkpoint, from its
    documented layout: Swin-L (192, [2, 2, 18, 2], [6, 12, 24, 48], window 12), clustering
    at stages 0-2 with 128 embedding channels, the 6-layer encoder on res5, a decoder with
    200 queries, 8 layers and 133 + 1 classes (no input_proj: res5 has 256 channels)."""
    shapes = {"backbone.patch_embed.proj.weight": (192, 3, 4, 4), "backbone.patch_embed.proj.bias": (192,)}
    norm = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,)}  # noqa: E731
    linear = lambda p, o, i: {f"{p}.weight": (o, i), f"{p}.bias": (o,)}  # noqa: E731
    attention = lambda p, d: {f"{p}.in_proj_weight": (3 * d, d), f"{p}.in_proj_bias": (3 * d,),  # noqa: E731
                              **linear(f"{p}.out_proj", d, d)}
    shapes.update(norm("backbone.patch_embed.norm", 192))
    for i, (depth, heads) in enumerate(zip((2, 2, 18, 2), (6, 12, 24, 48))):
        c = 192 * 2**i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}"
            shapes.update({**norm(f"{p}.norm1", c), **norm(f"{p}.norm2", c)})
            shapes.update({**linear(f"{p}.attn.qkv", 3 * c, c), **linear(f"{p}.attn.proj", c, c)})
            shapes[f"{p}.attn.relative_position_bias_table"] = (23 * 23, heads)
            shapes[f"{p}.attn.relative_position_index"] = (144, 144)
            shapes.update({**linear(f"{p}.mlp.fc1", 4 * c, c), **linear(f"{p}.mlp.fc2", c, 4 * c)})
        if i < 3:
            p = f"backbone.layers.{i}"
            shapes[f"{p}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes.update(norm(f"{p}.downsample.norm", 4 * c))
            shapes.update({f"{p}.clustering.fine_emb.weight": (128, c, 1, 1), f"{p}.clustering.temp": (1,),
                           f"{p}.clustering.coarse_emb.weight": (128, 2 * c, 1, 1)})
            shapes.update({**norm(f"{p}.clustering.fine_norm", c), **norm(f"{p}.clustering.coarse_norm", 2 * c)})
    shapes.update(norm("backbone.norm3", 1536))
    shapes.update({"backbone.aux.input_proj.0.weight": (256, 1536, 1, 1), "backbone.aux.input_proj.0.bias": (256,)})
    shapes.update(norm("backbone.aux.input_proj.1", 256))
    for i in range(6):
        p = f"backbone.aux.encoder.layers.{i}"
        shapes.update(attention(f"{p}.self_attn", 256))
        shapes.update({**linear(f"{p}.linear1", 2048, 256), **linear(f"{p}.linear2", 256, 2048)})
        shapes.update({**norm(f"{p}.norm1", 256), **norm(f"{p}.norm2", 256)})
    d = "sem_seg_head.predictor"
    shapes.update({f"{d}.query_feat.weight": (200, 256), f"{d}.query_embed.weight": (200, 256),
                   f"{d}.level_embed.weight": (1, 256)})
    shapes.update({f"{d}.mask_proj.weight": (256, 256, 1, 1), f"{d}.mask_proj.bias": (256,)})
    shapes.update({**linear(f"{d}.class_embed", 134, 256), **norm(f"{d}.decoder_norm", 256)})
    for i in range(3):
        shapes.update(linear(f"{d}.mask_embed.layers.{i}", 256, 256))
    for i in range(8):
        shapes.update(attention(f"{d}.transformer_self_attention_layers.{i}.self_attn", 256))
        shapes.update(norm(f"{d}.transformer_self_attention_layers.{i}.norm", 256))
        shapes.update(attention(f"{d}.transformer_cross_attention_layers.{i}.multihead_attn", 256))
        shapes.update(norm(f"{d}.transformer_cross_attention_layers.{i}.norm", 256))
        p = f"{d}.transformer_ffn_layers.{i}"
        shapes.update({**linear(f"{p}.linear1", 2048, 256), **linear(f"{p}.linear2", 256, 2048)})
        shapes.update(norm(f"{p}.norm", 256))
    shapes["criterion.empty_weight"] = (134,)
    return shapes


def test_released_hcformer_plus_swin_large_checkpoint_loads_without_missing_or_unexpected_keys(tmp_path):
    path = CONFIGS / "coco/panoptic-segmentation/swin/hcformer+_swin_large_IN21k_384_bs16_200ep.yaml"
    model = build_model(_load_cfg(path)).eval()
    layout = _released_hcformer_plus_swin_large_layout()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout

    # The checkpoint: one distinct constant per tensor, stored as a broadcast scalar (a few kB
    # on disk instead of 870 MB), loaded by the checkpointer as MODEL.WEIGHTS would be.
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    original = {k: torch.tensor(i % 1000, dtype=dtypes[k]).expand(shape) for i, (k, shape) in enumerate(layout.items())}
    torch.save({"model": original}, tmp_path / "hcformer+_swin_large.pth")
    checkpointer = HCFormerCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(tmp_path / "hcformer+_swin_large.pth")))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    for i, (k, v) in enumerate(model.state_dict().items()):
        assert torch.all(v == original[k][(0,) * v.dim()]), k


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
def test_swin_shapes_config_trains(tmp_path):
    from hcformer.data import ShapesSpec, register_shapes_datasets
    from hcformer.engine.trainer import Trainer

    register_shapes_datasets(str(tmp_path), ShapesSpec(image_size=64, num_train=4, num_val=1),
                             prefix="swin_shapes", replace=True)
    cfg = _load_cfg(
        CONFIGS / "shapes/panoptic-segmentation/hcformer_swinT_shapes.yaml",
        "DATASETS.TRAIN", ("swin_shapes_train_panoptic_with_sem_seg",), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (64,), "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
        "MODEL.MASK_FORMER.DEC_LAYERS", 2, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
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

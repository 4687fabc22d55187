"""The converter of the released ImageNet checkpoints, on state dicts written in the released
layout (key names and shapes of the authors' STViT)."""
import argparse
import importlib.util
import pickle
from pathlib import Path
from typing import Dict, Sequence

import torch

from svit import SViT, SViTClassifier
from svit.checkpoint import convert_released_state_dict, is_released_svit, released_architecture

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_svit_checkpoint.py"


def _bn(prefix: str, c: int, make) -> Dict[str, torch.Tensor]:
    out = {f"{prefix}.{n}": make(c) for n in ("weight", "bias", "running_mean", "running_var")}
    out[f"{prefix}.num_batches_tracked"] = torch.tensor(7)
    return out


def released_state_dict(
    dims: Sequence[int], depths: Sequence[int], layer_scale: Sequence[bool], make=torch.randn, classes: int = 10
) -> Dict[str, torch.Tensor]:
    """A state dict with the released key names and shapes (values random)."""
    sd: Dict[str, torch.Tensor] = {}
    c0 = dims[0]
    convs = [(c0 // 2, 3), (c0 // 2, c0 // 2), (c0, c0 // 2), (c0, c0)]
    for i, (cout, cin) in enumerate(convs):  # conv, GELU, BN per step: indices 3i, 3i + 2
        sd[f"patch_embed.proj.{3 * i}.weight"] = make(cout, cin, 3, 3)
        sd[f"patch_embed.proj.{3 * i}.bias"] = make(cout)
        sd.update(_bn(f"patch_embed.proj.{3 * i + 2}", cout, make))
    for k, (c, depth) in enumerate(zip(dims, depths)):
        for j in range(depth):
            p = f"layers.{k}.blocks.{j}"
            sd[f"{p}.pos_embed.conv.weight"], sd[f"{p}.pos_embed.conv.bias"] = make(c, 1, 3, 3), make(c)
            sd[f"{p}.norm1.norm.weight"], sd[f"{p}.norm1.norm.bias"] = make(c), make(c)
            sd[f"{p}.attn.unfold.weights"] = sd[f"{p}.attn.fold.weights"] = torch.eye(9).reshape(9, 1, 3, 3)
            sd[f"{p}.attn.stoken_refine.qkv.weight"] = make(3 * c, c, 1, 1)
            sd[f"{p}.attn.stoken_refine.qkv.bias"] = make(3 * c)
            sd[f"{p}.attn.stoken_refine.proj.weight"] = make(c, c, 1, 1)
            sd[f"{p}.attn.stoken_refine.proj.bias"] = make(c)
            sd.update(_bn(f"{p}.norm2", c, make))
            sd[f"{p}.mlp2.fc1.weight"], sd[f"{p}.mlp2.fc1.bias"] = make(4 * c, c, 1, 1), make(4 * c)
            sd[f"{p}.mlp2.conv.conv.weight"], sd[f"{p}.mlp2.conv.conv.bias"] = make(4 * c, 1, 3, 3), make(4 * c)
            sd[f"{p}.mlp2.fc2.weight"], sd[f"{p}.mlp2.fc2.bias"] = make(c, 4 * c, 1, 1), make(c)
            if layer_scale[k]:
                sd[f"{p}.gamma_1"], sd[f"{p}.gamma_2"] = make(1, c, 1, 1), make(1, c, 1, 1)
        if k < 3:
            sd[f"layers.{k}.downsample.proj.0.weight"] = make(dims[k + 1], c, 3, 3)
            sd[f"layers.{k}.downsample.proj.0.bias"] = make(dims[k + 1])
            sd.update(_bn(f"layers.{k}.downsample.proj.1", dims[k + 1], make))
    sd["proj.weight"], sd["proj.bias"] = make(1024, dims[3], 1, 1), make(1024)
    sd.update(_bn("norm", 1024, make))
    sd["head.weight"], sd["head.bias"] = make(classes, 1024), make(classes)
    return sd


TINY = dict(dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), layer_scale=(False, False, True, True))


def test_classifier_loads_the_converted_weights():
    torch.manual_seed(0)
    released = released_state_dict(**TINY)
    assert is_released_svit(released)
    converted, dropped = convert_released_state_dict(released, classifier=True, prefix="")
    model = SViTClassifier(num_classes=10, embed_dims=TINY["dims"], depths=TINY["depths"], num_heads=(1, 2, 3, 4),
                           layer_scale=TINY["layer_scale"])
    result = model.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    constant = ("unfold.weights", "fold.weights", "num_batches_tracked")
    assert sorted(dropped) == sorted(k for k in released if k.endswith(constant))

    state = model.state_dict()
    pairs = {
        "stem.11.running_var": "patch_embed.proj.11.running_var",
        "layers.1.blocks.1.cpe.conv.weight": "layers.1.blocks.1.pos_embed.conv.weight",
        "layers.1.blocks.1.norm1.weight": "layers.1.blocks.1.norm1.norm.weight",
        "layers.2.blocks.0.attn.mhsa.qkv.weight": "layers.2.blocks.0.attn.stoken_refine.qkv.weight",
        "layers.3.blocks.0.ffn.dwconv.conv.bias": "layers.3.blocks.0.mlp2.conv.conv.bias",
        "layers.3.blocks.0.ffn.fc2.weight": "layers.3.blocks.0.mlp2.fc2.weight",
        "layers.0.downsample.1.running_mean": "layers.0.downsample.proj.1.running_mean",
        "head.weight": "head.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], released[theirs]), ours
    assert torch.equal(state["layers.2.blocks.0.ls2.gamma"], released["layers.2.blocks.0.gamma_2"].flatten())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_architecture_is_read_from_the_tensors():
    with torch.device("meta"):
        small = released_state_dict((64, 128, 320, 512), (3, 5, 9, 3), (False,) * 4, make=torch.empty)
        base = released_state_dict((96, 192, 384, 512), (4, 6, 14, 6), (False, False, True, True), make=torch.empty)
    assert released_architecture(small) == {
        "EMBED_DIMS": [64, 128, 320, 512], "DEPTHS": [3, 5, 9, 3], "NUM_HEADS": [1, 2, 5, 8],
        "LAYER_SCALE": [False, False, False, False],
    }
    assert released_architecture(base)["NUM_HEADS"] == [2, 3, 6, 8]
    assert released_architecture(base)["LAYER_SCALE"] == [False, False, True, True]
    assert released_architecture(released_state_dict(**TINY, make=torch.empty))["NUM_HEADS"] is None


def _tool():
    spec = importlib.util.spec_from_file_location("convert_svit_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_writes_backbone_weights_and_reports(tmp_path: Path, capsys):
    torch.manual_seed(0)
    released = released_state_dict(**TINY)
    src = tmp_path / "stvit_tiny.pth"
    # a training checkpoint of the release: model, optimizer state, arguments (a Namespace)
    torch.save({"model": released, "epoch": 299, "args": argparse.Namespace(drop_path=0.1)}, src)
    dst = tmp_path / "svit_tiny.pkl"
    assert _tool().main([str(src), str(dst)]) == 0
    text = capsys.readouterr().out
    assert "shape mismatches: 0" in text and "unexpected (the file has them, the model does not): 0" in text
    assert "missing (the model has them, the file does not): 0" in text
    assert "NUM_HEADS: None" in text  # unknown variant: heads must be set by hand

    with open(dst, "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is False and all(k.startswith("backbone.") for k in data["model"])
    backbone = SViT(embed_dims=TINY["dims"], depths=TINY["depths"], num_heads=(1, 2, 3, 4),
                    layer_scale=TINY["layer_scale"], level=3)
    weights = {k[len("backbone."):]: torch.as_tensor(v) for k, v in data["model"].items()}
    result = backbone.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == []
    assert {k.split(".")[2] for k in result.missing_keys if not k.endswith("num_batches_tracked")} == {"clustering"}


def test_tool_refuses_weights_that_do_not_fit(tmp_path: Path, capsys):
    released = released_state_dict(**TINY)
    released["layers.1.blocks.0.attn.stoken_refine.qkv.weight"] = torch.zeros(5, 16, 1, 1)
    src, dst = tmp_path / "bad.pth", tmp_path / "bad.pkl"
    torch.save(released, src)
    assert _tool().main([str(src), str(dst)]) == 1
    assert "shape mismatches: 1" in capsys.readouterr().out
    assert not dst.exists()

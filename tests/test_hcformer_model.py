"""HCFormer model: sizes, outputs of all tasks, training step, padding, checkpoint layout."""
from typing import Dict, Tuple

import pytest
import torch
import torchvision
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn

from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.modeling.backbone.resnet import HCResNet


def _sample(h=64, w=96, classes=(1, 4)):
    inst = Instances((h, w))
    masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
    for i in range(len(classes)):
        masks[i, :, i * w // len(classes) : (i + 1) * w // len(classes)] = True
    inst.gt_masks = masks
    inst.gt_classes = torch.tensor(classes)
    return {"image": torch.rand(3, h, w) * 255, "instances": inst, "height": h, "width": w}


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("downsampling", ["conv", "deform"])
def test_inference_outputs_every_task(make_cfg, level, downsampling):
    cfg = make_cfg(**{"MODEL.HC.LEVEL": level, "MODEL.RESNETS.DOWNSAMPLING": downsampling})
    model = build_model(cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 50, 70) * 255, "height": 100, "width": 140}])
    assert out["sem_seg"].shape == (6, 100, 140)
    pan, segments = out["panoptic_seg"]
    assert pan.shape == (100, 140)
    inst = out["instances"]
    assert inst.image_size == (100, 140)
    assert inst.pred_masks.shape[1:] == (100, 140)
    assert len(model.backbone.clustering_layers) == level


def test_decoded_masks_have_the_stride_of_the_finest_level(make_cfg):
    for level, stride in [(0, 32), (1, 16), (2, 8), (3, 4)]:
        model = build_model(make_cfg(**{"MODEL.HC.LEVEL": level})).eval()
        images = model.preprocess([{"image": torch.rand(3, 64, 96) * 255}])
        with torch.no_grad():
            outputs, hierarchy = model.run(images)
        assert outputs["pred_masks"].shape[-2:] == (2, 3)  # the head's masks: on the stride-32 grid
        assert hierarchy.decode(outputs["pred_masks"]).shape[-2:] == (64 // stride, 96 // stride)
        assert hierarchy.num_levels == level


def test_training_step_reduces_loss_and_excludes_padding(make_cfg):
    torch.manual_seed(0)
    model = build_model(make_cfg())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    batch = [_sample(64, 96), _sample(48, 80)]  # the second image is padded
    first = None
    for _ in range(8):
        losses = model(batch)
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        # the regulariser is 0.1 * sum |s| over the three clustering scales
        scales = [p for n, p in model.named_parameters() if n.endswith(".temp")]
        assert len(scales) == 3
        torch.testing.assert_close(losses["loss_scale_reg"], 0.1 * torch.cat(scales).abs().sum())
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), name
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first
    assert "loss_ce_1" in losses and "loss_ce_2" not in losses  # DEC_LAYERS 3: two aux predictions
    assert all(p.grad is not None and p.grad.abs().item() > 0 for p in scales)


def test_padding_cells_are_never_candidates(make_cfg):
    model = build_model(make_cfg()).eval()
    images = model.preprocess([{"image": torch.rand(3, 64, 96) * 255}, {"image": torch.rand(3, 40, 50) * 255}])
    with torch.no_grad():
        feats = model.backbone(images.tensor, image_sizes=images.image_sizes)
    coarsest = feats["assign"].assignments[0]  # (B, 9, 4, 6): stride-16 pixels → stride-32 cells
    # image 2 is 40x50: stride-32 cells with column >= 2 are padding; pixels of column 2 of the
    # stride-16 grid (inside the image) must give them zero weight (candidates dx=+1 → column 2)
    right = coarsest[1, [2, 5, 8], :2, 3]  # parent column 1, candidate column 2 = padding
    assert torch.all(right == 0)


def test_scale_regulariser_uses_sum_of_absolute_values(make_cfg):
    model = build_model(make_cfg())
    with torch.no_grad():
        for i, layer in enumerate(model.backbone.clustering_layers):
            layer.temp.fill_([-0.2, 0.1, 0.3][i])
    torch.testing.assert_close(model.scale_regulariser(), torch.tensor(0.6))


def _original_resnet50_keys(level=3, deform=True):
    """State-dict keys of the original HCFormer R50 checkpoint, from its documented layout."""
    keys = ["backbone.stem.0.weight"] + [f"backbone.stem.1.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
    bn = ("weight", "bias", "running_mean", "running_var")
    for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        deformable = deform and stage >= 5 - level and stage > 1
        for i in range(blocks):
            p = f"backbone.layer{stage}.{i}"
            for c in (1, 2, 3):
                if c == 2 and i == 0 and deformable:
                    keys += [f"{p}.conv2.{m}.{t}" for m in ("deform", "offset") for t in ("weight", "bias")]
                else:
                    keys.append(f"{p}.conv{c}.weight")
                keys += [f"{p}.bn{c}.{s}" for s in bn]
            if i == 0:
                if deformable:
                    keys += [f"{p}.downsample.0.{m}.{t}" for m in ("deform", "offset") for t in ("weight", "bias")]
                else:
                    keys.append(f"{p}.downsample.0.weight")
                keys += [f"{p}.downsample.1.{s}" for s in bn]
    for i in range(level):
        p = f"backbone.clustering_layers.{i}"
        keys += [f"{p}.fine_emb.weight", f"{p}.coarse_emb.weight", f"{p}.temp"]
        keys += [f"{p}.{n}_norm.{t}" for n in ("fine", "coarse") for t in ("weight", "bias")]
    d = "sem_seg_head.predictor"
    keys += [f"{d}.{n}.weight" for n in ("query_feat", "query_embed", "level_embed")]
    keys += [f"{d}.{n}.{t}" for n in ("input_proj", "mask_proj", "class_embed", "decoder_norm") for t in ("weight", "bias")]
    keys += [f"{d}.mask_embed.layers.{i}.{t}" for i in range(3) for t in ("weight", "bias")]
    attn = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    for i in range(8):
        keys += [f"{d}.transformer_self_attention_layers.{i}.self_attn.{a}" for a in attn]
        keys += [f"{d}.transformer_cross_attention_layers.{i}.multihead_attn.{a}" for a in attn]
        for n in ("transformer_self_attention_layers", "transformer_cross_attention_layers"):
            keys += [f"{d}.{n}.{i}.norm.{t}" for t in ("weight", "bias")]
        keys += [f"{d}.transformer_ffn_layers.{i}.{n}.{t}" for n in ("linear1", "linear2", "norm") for t in ("weight", "bias")]
    keys.append("criterion.empty_weight")
    return keys


def _coco_r50_cfg(make_cfg):
    return make_cfg(**{
        "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.NORM": "FrozenBN", "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100, "MODEL.MASK_FORMER.DEC_LAYERS": 9,
        "MODEL.MASK_FORMER.HIDDEN_DIM": 256, "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
        "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    })


def test_original_checkpoint_layout_loads_without_missing_or_unexpected_keys(make_cfg, tmp_path):
    model = build_model(_coco_r50_cfg(make_cfg)).eval()
    assert sorted(model.state_dict()) == sorted(_original_resnet50_keys())
    assert sum(p.numel() for p in model.parameters()) == 38_387_363  # the original's count

    # an "original" checkpoint: the documented keys with perturbed values of the right shapes
    torch.manual_seed(0)
    original = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    original = {k: original[k] for k in _original_resnet50_keys()}
    torch.save({"model": original}, tmp_path / "original.pth")

    fresh = build_model(_coco_r50_cfg(make_cfg)).eval()
    HCFormerCheckpointer(fresh).load(str(tmp_path / "original.pth"))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, original[k]), k

    # round trip: save with our checkpointer, load into a third model, same outputs
    HCFormerCheckpointer(fresh, save_dir=str(tmp_path)).save("ours")
    third = build_model(_coco_r50_cfg(make_cfg)).eval()
    HCFormerCheckpointer(third).load(str(tmp_path / "ours.pth"))
    image = {"image": torch.rand(3, 64, 64) * 255}
    with torch.no_grad():
        a, b = fresh([dict(image)]), third([dict(image)])
    torch.testing.assert_close(a[0]["sem_seg"], b[0]["sem_seg"])
    assert not list(tmp_path.glob("*.tmp"))


def test_hcformer_plus_has_the_original_parameter_count(make_cfg):
    cfg = _coco_r50_cfg(make_cfg)
    cfg.MODEL.RESNETS.AUX = "transformer"
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == 45_819_555
    assert any(k.startswith("backbone.aux.encoder.layers.5.self_attn.in_proj_weight") for k in model.state_dict())


def test_remote_weights_are_refused(make_cfg):
    model = build_model(make_cfg())
    with pytest.raises(ValueError, match="never downloads"):
        HCFormerCheckpointer(model).load("detectron2://ImageNetPretrained/torchvision/R-50.pkl")


def test_imagenet_weights_of_a_deeper_resnet_are_refused(tmp_path):
    from hcformer.modeling.backbone.resnet import load_imagenet_weights

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    backbone = HCResNet(depth=18, level=3, norm="FrozenBN")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"r34.pth does not fit this ResNet \(MODEL.RESNETS.DEPTH 18\): "
                       r"\d+ of its tensors are unknown to it: layer1.2.bn1.bias"):
        load_imagenet_weights(backbone, str(tmp_path / "r34.pth"))
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # nothing loaded


@pytest.mark.parametrize("downsampling", ["conv", "deform"])
def test_torchvision_imagenet_weights_load_into_hc_resnet(tmp_path, downsampling):
    tv = torchvision.models.resnet18(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    backbone = HCResNet(depth=18, level=3, downsampling=downsampling, norm="FrozenBN").eval()
    from hcformer.modeling.backbone.resnet import load_imagenet_weights

    load_imagenet_weights(backbone, str(tmp_path / "r18.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = backbone(x)["res2"]
        ref = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))
    torch.testing.assert_close(ours, ref)
    if downsampling == "conv":
        with torch.no_grad():
            torch.testing.assert_close(backbone(x)["res5"], tv.layer4(tv.layer3(tv.layer2(ref))))
    else:
        weight = backbone.layer4[0].conv1.deform.weight
        torch.testing.assert_close(weight, tv.layer4[0].conv1.weight)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> Tuple[int, Dict[str, torch.Tensor]]:
    """Bytes of the tensors autograd keeps for backward after ``model(x)`` (each storage once,
    parameters left out), and the outputs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(kept.values()), out


@pytest.mark.parametrize(
    "downsampling, recompute, freeze_at",
    [("conv", {"use_checkpoint": True}, 0), ("deform", {"use_checkpoint": True}, 0),
     ("deform", {"checkpoint_stages": ["stem", "res2"]}, 0), ("deform", {"checkpoint_stages": ["res3", "res5"]}, 0),
     # frozen stem and res2 (as with ImageNet weights and FREEZE_AT 2): segments without gradients
     ("deform", {"checkpoint_stages": ["stem", "res2", "res3"]}, 2)],
)
def test_resnet_gradient_checkpointing_gives_the_same_gradients_in_less_memory(downsampling, recompute, freeze_at):
    torch.manual_seed(0)
    kwargs = dict(depth=18, level=3, downsampling=downsampling, norm="FrozenBN", emb_dim=16, freeze_at=freeze_at)
    plain = HCResNet(**kwargs).train()
    checkpointed = HCResNet(**kwargs, **recompute).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    kept = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        kept[name], out = saved_activation_bytes(model, x)
        (out["res5"].square().mean() + out["assign"].assignments[-1].square().mean()).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        assert p.requires_grad or p.grad is None, name  # the frozen stages get none
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    assert kept["checkpointed"] < kept["plain"], kept


def test_resnet_checkpoint_stages_drop_what_the_stage_held():
    """Recomputing the stem and res2 (a segment each) keeps neither their inner maps nor the
    block outputs inside res2: at least those bytes fewer than without."""
    torch.manual_seed(0)
    kwargs = dict(depth=18, level=3, downsampling="conv", norm="FrozenBN", emb_dim=16)
    x = torch.randn(2, 3, 64, 96)
    plain, _ = saved_activation_bytes(HCResNet(**kwargs).train(), x)
    stem_res2, _ = saved_activation_bytes(HCResNet(**kwargs, checkpoint_stages=["stem", "res2"]).train(), x)
    # stem: the ReLU output at stride 2 (64 ch) and int64 max-pool indices at stride 4; res2 (2
    # basic blocks, 64 ch at stride 4): 3 maps inside the blocks. What stays: the image, the
    # stem's output (the input of the res2 segment) and res2's output
    stride2, stride4 = 2 * 64 * 32 * 48 * 4, 2 * 64 * 16 * 24 * 4
    assert plain - stem_res2 >= stride2 + 2 * stride4 + 3 * stride4


def test_resnet_gradient_checkpointing_refuses_batch_norm_and_bad_stages():
    with pytest.raises(ValueError, match="MODEL.RESNETS.USE_CHECKPOINT.*'BN'"):
        HCResNet(depth=18, norm="BN", use_checkpoint=True)
    with pytest.raises(ValueError, match="MODEL.RESNETS.CHECKPOINT_STAGES.*'BN'"):
        HCResNet(depth=18, norm="BN", checkpoint_stages=["res2"])
    with pytest.raises(ValueError, match=r"CHECKPOINT_STAGES: unknown stage\(s\) \['layer1'\]"):
        HCResNet(depth=18, norm="FrozenBN", checkpoint_stages=["layer1"])
    both = r"set MODEL.RESNETS.USE_CHECKPOINT False and MODEL.RESNETS.CHECKPOINT_STAGES \[\]$"
    with pytest.raises(ValueError, match=both):
        HCResNet(depth=18, norm="BN", use_checkpoint=True, checkpoint_stages=["stem"])

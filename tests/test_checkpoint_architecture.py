"""A checkpoint of another architecture is refused with every mismatching tensor named in one
message; backbone weights may lack the head; MODEL.WEIGHTS_IGNORE leaves out a head on purpose."""
import re
from typing import Dict

import pytest
import torch
from detectron2.modeling import build_model

from hcformer.checkpoint import CheckpointMismatchError, HCFormerCheckpointer
from tiny_configs import tiny_hcformer_cfg

DECODER = "sem_seg_head.predictor"


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_hcformer_cfg(**overrides))


def snapshot(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def is_named(key: str, message: str) -> bool:
    """Whether the report names ``key``: on its own line, or in a "module.* (n tensors)" line."""
    lines = [line.strip() for line in message.splitlines()]
    if key in lines or any(line.startswith(f"{key}: ") for line in lines):
        return True
    groups = [m[1] for m in map(re.compile(r"^(\S+)\.\* \(\d+ tensors\)$").match, lines) if m]
    return any(key.startswith(group + ".") for group in groups)


@pytest.mark.parametrize("file_layers, model_layers", [(4, 2), (2, 4)])
def test_another_number_of_decoder_layers_is_refused_with_the_names(tmp_path, file_layers, model_layers):
    trained = tiny_model(**{"MODEL.MASK_FORMER.DEC_LAYERS": file_layers})
    torch.save({"model": trained.state_dict()}, tmp_path / "model.pth")
    model = tiny_model(seed=1, **{"MODEL.MASK_FORMER.DEC_LAYERS": model_layers})
    before = snapshot(model)

    with pytest.raises(CheckpointMismatchError) as error:
        HCFormerCheckpointer(model).load(str(tmp_path / "model.pth"))
    message = str(error.value)
    extra = sorted(set(trained.state_dict()) ^ set(model.state_dict()))
    assert extra and all(k.startswith(f"{DECODER}.transformer_") for k in extra)
    title = "unknown to the model" if file_layers > model_layers else "missing from the checkpoint"
    assert f"{title} ({len(extra)}):" in message
    assert f"0 have another shape, {len(extra) if title.startswith('missing') else 0} of the model" in message
    unnamed = [k for k in extra if not is_named(k, message)]
    assert not unnamed, unnamed
    assert str(tmp_path / "model.pth") in message and "the file holds a whole model" in message
    for key, value in model.state_dict().items():  # refused before anything was loaded
        assert torch.equal(value, before[key]), key


def test_shapes_and_extra_tensors_are_named_in_one_message(tmp_path):
    trained = tiny_model(**{"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 16, "MODEL.MASK_FORMER.DEC_LAYERS": 4})
    torch.save({"model": trained.state_dict()}, tmp_path / "model.pth")
    model = tiny_model(**{"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 8, "MODEL.MASK_FORMER.DEC_LAYERS": 3})
    with pytest.raises(CheckpointMismatchError) as error:
        HCFormerCheckpointer(model).load(str(tmp_path / "model.pth"))
    message = str(error.value)
    assert "shape mismatches (2):" in message
    for name in ("query_feat", "query_embed"):
        assert f"{DECODER}.{name}.weight: checkpoint (16, 64), model (8, 64)" in message
    extra = sorted(set(trained.state_dict()) - set(model.state_dict()))
    assert len(extra) == 18  # one decoder layer: self-attention 6, cross-attention 6, FFN 6
    assert f"unknown to the model ({len(extra)}):" in message
    assert all(is_named(k, message) for k in extra)
    assert "missing from the checkpoint" not in message


def test_long_lists_are_grouped_by_module_and_counted():
    checkpointer = HCFormerCheckpointer(tiny_model())
    state = {f"head.layers.{i}.{p}": torch.zeros(1) for i in range(30) for p in ("weight", "bias")}
    with pytest.raises(CheckpointMismatchError) as error:
        checkpointer._check_architecture(state)
    message = str(error.value)
    assert "unknown to the model (60):" in message and "0 tensors match" in message
    lines = message.split("unknown to the model (60):\n")[1].splitlines()
    # 30 modules of 2 tensors do not fit in 20 lines: one line for all, with the count
    assert lines == ["    head.layers.* (60 tensors)"]


def test_backbone_weights_load_without_the_head(tmp_path):
    import torchvision

    imagenet = torchvision.models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")  # torchvision names, converted on load
    model = tiny_model()
    head_before = snapshot(model.sem_seg_head)
    HCFormerCheckpointer(model).load(str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.stem[0].weight, imagenet.conv1.weight)
    for key, value in model.sem_seg_head.state_dict().items():
        assert torch.equal(value, head_before[key]), key

    # the same as a converted file (tools/convert-torchvision-to-d2.py): backbone.* only
    trained = tiny_model(seed=1)
    backbone = {k: v for k, v in trained.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    HCFormerCheckpointer(model).load(str(tmp_path / "backbone.pth"))
    torch.testing.assert_close(model.backbone.stem[0].weight, trained.backbone.stem[0].weight)

    # backbone weights of another shape are still refused
    wide = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.endswith("stem.0.weight") else v
            for k, v in backbone.items()}
    torch.save({"model": wide}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.stem\.0\.weight: checkpoint \(65,"):
        HCFormerCheckpointer(model).load(str(tmp_path / "wide.pth"))

    # and so are the weights of a deeper backbone: a torchvision ResNet-34 for this ResNet-18
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    stem_before = model.backbone.stem[0].weight.clone()
    with pytest.raises(CheckpointMismatchError, match=r"backbone tensors unknown to the model \(\d+\):\n +backbone\.layer1\.2\."):
        HCFormerCheckpointer(model).load(str(tmp_path / "r34.pth"))
    assert torch.equal(model.backbone.stem[0].weight, stem_before)  # refused before loading anything


def test_buffers_computed_from_the_config_need_not_be_in_the_file(tmp_path):
    trained = tiny_model()
    state = trained.state_dict()
    dropped = [k for k in state if k == "criterion.empty_weight" or k.endswith("num_batches_tracked")]
    assert len(dropped) > 10
    torch.save({"model": {k: v for k, v in state.items() if k not in dropped}}, tmp_path / "model.pth")
    model = tiny_model(seed=1)
    HCFormerCheckpointer(model).load(str(tmp_path / "model.pth"))
    torch.testing.assert_close(model.sem_seg_head.predictor.class_embed.weight,
                               trained.sem_seg_head.predictor.class_embed.weight)

    # but a learnt tensor missing from a whole-model file is refused
    del state[f"{DECODER}.decoder_norm.weight"]
    torch.save({"model": state}, tmp_path / "incomplete.pth")
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint \\(1\\):\n    "
                                                      f"{DECODER}.decoder_norm.weight$"):
        HCFormerCheckpointer(tiny_model()).load(str(tmp_path / "incomplete.pth"))


def test_fine_tuning_on_another_number_of_classes(tmp_path):
    coco = tiny_model(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 6})
    torch.save({"model": coco.state_dict()}, tmp_path / "coco.pth")
    ade = tiny_model(seed=1, **{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4})
    with pytest.raises(CheckpointMismatchError) as error:
        HCFormerCheckpointer(ade).load(str(tmp_path / "coco.pth"))
    message = str(error.value)
    assert "shape mismatches (2):" in message and "MODEL.WEIGHTS_IGNORE" in message
    assert f"{DECODER}.class_embed.weight: checkpoint (7, 64), model (5, 64)" in message
    assert "empty_weight" not in message  # computed from NUM_CLASSES: never a mismatch

    before = snapshot(ade)
    head = [f"{DECODER}.class_embed"]  # MODEL.WEIGHTS_IGNORE
    checkpointer = HCFormerCheckpointer(ade, str(tmp_path / "out"), ignore_prefixes=head)
    checkpointer.resume_or_load(str(tmp_path / "coco.pth"), resume=True)  # nothing to resume: loads
    loaded, trained = ade.state_dict(), coco.state_dict()
    for key, value in loaded.items():
        if key.startswith(f"{DECODER}.class_embed.") or key == "criterion.empty_weight":
            assert torch.equal(value, before[key]), key  # kept its initialisation
        else:
            assert torch.equal(value, trained[key]), key

    # a resumed run is this model: everything is loaded, the ignored head too
    (tmp_path / "out").mkdir()
    with torch.no_grad():
        ade.sem_seg_head.predictor.class_embed.weight.add_(1.0)
    checkpointer.save("model_0000009")
    saved = ade.sem_seg_head.predictor.class_embed.weight.clone()
    resumed = tiny_model(seed=2, **{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4})
    resuming = HCFormerCheckpointer(resumed, str(tmp_path / "out"), ignore_prefixes=head)
    resuming.resume_or_load(str(tmp_path / "coco.pth"), resume=True)
    torch.testing.assert_close(resumed.sem_seg_head.predictor.class_embed.weight, saved)


def _save_as_model_zoo_pickle(state: Dict[str, torch.Tensor], path) -> None:
    """The layout of detectron2's and Mask2Former's .pkl files: numpy arrays, an author, and
    the flag that asks detectron2 for name matching."""
    import pickle

    data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Mask2Former",
            "matching_heuristics": True}
    with open(path, "wb") as f:
        pickle.dump(data, f)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_files_asking_for_name_matching_are_still_checked(tmp_path, suffix):
    trained = tiny_model(**{"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 16})
    path = tmp_path / f"model{suffix}"
    if suffix == ".pkl":
        _save_as_model_zoo_pickle(trained.state_dict(), path)
    else:
        torch.save({"model": trained.state_dict(), "matching_heuristics": True}, path)
    model = tiny_model(seed=1)
    before = snapshot(model)

    # name matching would skip the two query tensors with a warning and load everything else
    with pytest.raises(CheckpointMismatchError) as error:
        HCFormerCheckpointer(model, allow_pickle=True).load(str(path))
    message = str(error.value)
    assert "shape mismatches (2):" in message and "the file holds a whole model" in message
    assert f"{DECODER}.query_feat.weight: checkpoint (16, 64), model (8, 64)" in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key

    # a file of this very architecture loads completely, numpy arrays and all
    same = tiny_model(seed=2)
    if suffix == ".pkl":
        _save_as_model_zoo_pickle(same.state_dict(), path)
    else:
        torch.save({"model": same.state_dict(), "matching_heuristics": True}, path)
    HCFormerCheckpointer(model, allow_pickle=True).load(str(path))
    for key, value in same.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_name_matching_is_kept_for_files_with_other_names(tmp_path):
    # backbone weights without the "backbone." prefix: only name matching can place them
    trained = tiny_model(seed=1)
    backbone = {k[len("backbone."):]: v for k, v in trained.state_dict().items() if k.startswith("backbone.")}
    _save_as_model_zoo_pickle(backbone, tmp_path / "backbone.pkl")
    model = tiny_model()
    HCFormerCheckpointer(model, allow_pickle=True).load(str(tmp_path / "backbone.pkl"))
    torch.testing.assert_close(model.backbone.stem[0].weight, trained.backbone.stem[0].weight)

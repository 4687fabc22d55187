"""Exported models (tools/export_model.py) compute what the eager model computes, and the runner
of exported models (tools/run_exported.py, hcformer_deploy) needs no detectron2 and writes the
eager demo's prediction files.

Random weights fixed by seeds, small inputs; every export is shared by the tests that read it.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tiny_configs import ROOT, load_script

from hcformer.engine.inference_model import build_inference_model, inference_cfg
from hcformer.engine.projects import import_project_of
from hcformer_deploy.exported_model import ExportedModel

SHAPES = ROOT / "configs/shapes/panoptic-segmentation/hcformer_R18_shapes.yaml"
COCO_R50 = ROOT / "configs/coco/panoptic-segmentation/hcformer_R50_bs16_50ep.yaml"
SWIN = ROOT / "configs/shapes/panoptic-segmentation/hcformer_swinT_shapes.yaml"
PACA = ROOT / "projects/PaCa/configs/shapes/hcformer_hc_paca_tiny_shapes.yaml"
SVIT = ROOT / "projects/SViT/configs/shapes/hcformer_svit_tiny_shapes.yaml"
CAST = ROOT / "projects/CAST/configs/shapes/hcformer_cast_tiny_shapes.yaml"
# the tolerances: onnxruntime within 1e-4 of the eager model, TorchScript within 1e-5
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-5}
# the eager model also returns "sem_seg", which the graph always computes
SEMANTIC_ON = ["MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True"]

export_tool = load_script("tools/export_model.py")


def export(directory: Path, config: Path, fmt: str, *flags: str, opts=()) -> ExportedModel:
    torch.manual_seed(0)  # the weights of a config without MODEL.WEIGHTS
    argv = ["--config-file", str(config), "--format", fmt, "--output", str(directory), *flags, *SEMANTIC_ON, *opts]
    assert export_tool.main(argv) == 0
    return ExportedModel(str(directory))


def eager_model(config: Path, opts=()):
    cfg = inference_cfg(str(config), ["MODEL.DEVICE", "cpu", *SEMANTIC_ON, *opts])
    torch.manual_seed(0)
    return build_inference_model(cfg)


def random_image(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((3, height, width), generator=torch.Generator().manual_seed(seed)) * 255


def assert_matches_eager(model, exported: ExportedModel, height: int, width: int, clusterings: bool = False):
    """Graph outputs within the format's tolerance of the eager model's; the post-processed
    results the same but for pixels whose decision is a tie within that tolerance."""
    image = random_image(height, width)
    outputs = exported.run_graph(image[None].numpy())
    with torch.no_grad():
        eager = model([{"image": image, "height": height, "width": width}], clusterings="levels" if clusterings else [])[0]
        raw, hierarchy = model.run(model.preprocess([{"image": image}]))
        masks = hierarchy.decode(raw["pred_masks"])
    tolerance = TOLERANCE[exported.format]
    torch.testing.assert_close(outputs["pred_logits"], raw["pred_logits"], atol=tolerance, rtol=0)
    torch.testing.assert_close(outputs["pred_masks"], masks, atol=tolerance, rtol=0)
    torch.testing.assert_close(outputs["sem_seg"][0], eager["sem_seg"], atol=tolerance, rtol=0)
    assert outputs["sem_seg"].shape == (1, exported.num_classes, height, width)
    if clusterings:
        for name, ids in eager["clusterings"].items():
            assert torch.equal(outputs[name][0], ids), name

    result = exported.postprocess(outputs, (height, width), (height, width))
    # Pixels may differ only where the eager decision is a tie within rounding: two kept
    # queries' scores, or the winner's mask probability and 0.5, closer than the tolerance.
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    mask_pred = F.interpolate(masks, size=padded, mode="bilinear", align_corners=False)[0, :, :height, :width]
    mask_cls = raw["pred_logits"][0]
    assert set(result) == set(eager) - {"clusterings", "level_strides"} | ({"clusterings"} if clusterings else set())
    if "panoptic_seg" in eager:
        panoptic, segments = result["panoptic_seg"]
        assert segments == eager["panoptic_seg"][1]
        differ = panoptic != eager["panoptic_seg"][0]
        undecided = _panoptic_ties(mask_cls, mask_pred, exported.object_mask_threshold, exported.num_classes,
                                   10 * tolerance)
        assert not (differ & ~undecided).any() and differ.float().mean() < 0.01
    if "instances" in eager:
        instances = eager["instances"]
        assert torch.equal(result["instances"]["pred_classes"], instances.pred_classes)
        torch.testing.assert_close(result["instances"]["scores"], instances.scores, atol=tolerance, rtol=0)
        differ = result["instances"]["pred_masks"] != instances.pred_masks  # binary masks: logit > 0
        near_zero = mask_pred.abs() < 10 * tolerance
        assert differ.sum() <= 0.01 * differ.numel() and not (differ.any(0) & ~near_zero.any(0)).any()


def _panoptic_ties(mask_cls, mask_pred, threshold, num_classes, margin):
    """(H, W) pixels whose panoptic decision is within ``margin`` of changing."""
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = labels.ne(num_classes) & (scores > threshold)
    if keep.sum() == 0:
        return torch.zeros(mask_pred.shape[-2:], dtype=torch.bool)
    probs = mask_pred[keep].sigmoid()
    weighted = scores[keep, None, None] * probs
    top = weighted.topk(min(2, len(weighted)), dim=0).values
    tie = (top[0] - top[-1] < margin) if len(top) == 2 else torch.zeros_like(top[0], dtype=torch.bool)
    winner_prob = probs.gather(0, weighted.argmax(0)[None])[0]
    return tie | ((winner_prob - 0.5).abs() < margin)


# ---------------------------------------------------------------------------- shapes R18, both formats
@pytest.fixture(scope="module")
def shapes_model():
    return eager_model(SHAPES)


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def shapes_export(request, tmp_path_factory):
    """The shapes model exported with --dynamic --clusterings (traced at 64x96)."""
    directory = tmp_path_factory.mktemp(f"shapes_{request.param}")
    return export(directory, SHAPES, request.param, "--dynamic", "--clusterings", "--height", "64", "--width", "96")


def test_export_json_describes_the_graph(shapes_export):
    info = shapes_export.info
    assert info["outputs"][:3] == ["pred_logits", "pred_masks", "sem_seg"]
    assert info["outputs"][3:] == ["level0", "level1", "level2", "level3"]
    assert info["mask_stride"] == 4 and info["input"]["dynamic"] and info["input"]["size_divisibility"] == 32
    assert info["classes"]["thing_classes"][:4] == ["circle", "square", "triangle", "star"]
    assert info["postprocess"]["thing_ids"] == [0, 1, 2, 3]
    # the tool checked the file at the traced size and at one it was not traced at
    assert set(info["check"]["max_abs_difference"]) == {"64x96", "81x99"}


@pytest.mark.parametrize("size", [(64, 96), (70, 100), (128, 64)])
def test_shapes_export_matches_eager_at_several_sizes(shapes_model, shapes_export, size):
    assert_matches_eager(shapes_model, shapes_export, *size, clusterings=True)


def test_runner_draws_the_exported_cluster_maps(shapes_export, tmp_path):
    runner = load_script("tools/run_exported.py")
    Image.fromarray(random_image(80, 120).permute(1, 2, 0).numpy().astype(np.uint8)).save(tmp_path / "photo.png")
    directory = str(Path(shapes_export.info["model_path"]).parent)
    pictures = {}
    for level in (None, 0, 3):
        out = tmp_path / f"out{level}"
        flags = [] if level is None else ["--show-level", str(level)]
        assert runner.main(["--exported", directory, "--input", str(tmp_path / "photo.png"), "--output", str(out), *flags]) == 0
        pictures[level] = np.asarray(Image.open(out / "photo.png"))
    yellow = {level: (pictures[level] == (255, 255, 0)).all(-1) & (pictures[None] != (255, 255, 0)).any(-1) for level in (0, 3)}
    # level 0 cells (stride 4) have more boundaries than level 3 clusters, which merge them
    assert yellow[0].sum() > yellow[3].sum() > 0
    assert runner.main(["--exported", directory, "--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "x"),
                        "--show-level", "7"]) == 2


# ---------------------------------------------------------------------------- other configs
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_coco_r50_panoptic_fixed_size_export_matches_eager(tmp_path, fmt):
    opts = ["MODEL.WEIGHTS", ""]  # the config names ImageNet weights: random ones here
    exported = export(tmp_path, COCO_R50, fmt, "--height", "64", "--width", "96", opts=opts)
    assert exported.info["postprocess"]["num_queries"] == 100 and exported.num_classes == 133
    assert_matches_eager(eager_model(COCO_R50, opts), exported, 64, 96)
    # exported without --dynamic: that size only, checked on the traced image and another one
    assert not exported.info["input"]["dynamic"]
    assert set(exported.info["check"]["max_abs_difference"]) == {"64x96", "64x96, another image"}
    with pytest.raises(ValueError, match="takes 64x96 images only, got 96x64"):
        exported.run_graph(random_image(96, 64)[None].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("config", [SWIN, PACA, SVIT], ids=["hc_swin", "hc_paca", "hc_svit"])
def test_swin_paca_and_svit_exports_match_eager(tmp_path, config):
    exported = export(tmp_path, config, "onnx", "--dynamic", "--height", "64", "--width", "64")
    # 70x100: SViT's super-token grids (8 at stride 4) pad its maps, which 64x64 did not
    assert_matches_eager(eager_model(config), exported, 70, 100)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cast_exports_at_a_fixed_size_superpixels_included(tmp_path, fmt):
    """SLIC is tensor code: the graph computes the superpixels, tokens and segment hierarchy."""
    exported = export(tmp_path, CAST, fmt, "--clusterings", "--height", "64", "--width", "64")
    assert exported.info["outputs"][-1] == "level4"  # 4 pooling levels and the superpixels
    assert_matches_eager(eager_model(CAST), exported, 64, 64, clusterings=True)


@pytest.mark.parametrize("flags, opts, reason", [
    (["--dynamic"], [], "follows the image size: export without --dynamic"),
    ([], ["MODEL.CAST.SUPERPIXEL.METHOD", "SEEDS"], "'SEEDS' runs in OpenCV, outside the graph"),
], ids=["dynamic", "seeds"])
def test_cast_export_names_what_no_graph_holds(tmp_path, capfd, flags, opts, reason):
    argv = ["--config-file", str(CAST), "--format", "onnx", "--output", str(tmp_path), "--height", "64",
            "--width", "64", *flags, *opts]
    assert export_tool.main(argv) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the model cannot be exported to onnx")
    assert "D2HCCAST: " in errors[0] and reason in errors[0]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_trace_that_froze_a_size_fails_its_check_and_leaves_no_file(tmp_path, capfd, monkeypatch):
    """The bug this project had: SViT's super-token sums sized by int(), a constant in the trace.
    Exported at 64x64, the file cannot run at the check's second size: one error line, no file."""
    import_project_of(str(SVIT))  # the tool's own way to import the config's project
    import svit.super_token_attention as sta

    scatter = sta.scatter
    monkeypatch.setattr(sta, "scatter", lambda values, weights, size, grid, kernel: scatter(
        values, weights, (int(size[0]), int(size[1])), grid, kernel))
    torch.manual_seed(0)
    argv = ["--config-file", str(SVIT), "--format", "onnx", "--output", str(tmp_path), "--dynamic",
            "--height", "64", "--width", "64"]
    assert export_tool.main(argv) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the exported onnx model fails at 81x67: "), errors
    assert errors[0].endswith("; the trace does not hold for this input")
    assert not (tmp_path / "export.json").exists() and not (tmp_path / "model.onnx").exists()


# ---------------------------------------------------------------------------- the exported demo
def _voc_weights(path: Path) -> None:
    """A seeded shapes model whose queries differ enough to make a few segments on a photo:
    class logits scaled, "no object" suppressed, pixel embeddings centred on the photo's mean."""
    cfg = inference_cfg(str(SHAPES), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_inference_model(cfg)
    predictor = model.sem_seg_head.predictor
    image = np.asarray(Image.open(path.parent / "image.png").resize((170, 128)))
    with torch.no_grad():
        predictor.class_embed.weight *= 30
        predictor.class_embed.bias[-1] -= 4
        predictor.mask_embed.layers[-1].weight *= 3
        x = (torch.as_tensor(image.transpose(2, 0, 1).astype(np.float32)) - model.pixel_mean) / model.pixel_std
        coarsest = model.backbone(x[None, :, :128, :160])[model.sem_seg_head.in_feature]
        predictor.mask_proj.bias.copy_(-(predictor.mask_proj.weight[:, :, 0, 0] @ coarsest.mean((0, 2, 3))))
    torch.save({"model": model.state_dict()}, path)


@pytest.mark.slow
def test_exported_demo_writes_the_eager_demos_files_without_detectron2(tmp_path):
    voc_sample = load_script("datasets/voc_sample.py")
    photo = voc_sample.write_voc_sample(str(tmp_path / "voc"))["file_name"]
    weights = tmp_path / "voc" / "model.pth"
    _voc_weights(weights)
    opts = ["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", "128"]
    export(tmp_path / "exported", SHAPES, "onnx", "--dynamic", "--height", "64", "--width", "64", opts=opts)
    load_script("demo/demo.py").main(["--config-file", str(SHAPES), "--input", photo, "--output", str(tmp_path / "eager"),
                                      "--save-predictions", "--confidence-threshold", "0.3", *SEMANTIC_ON, *opts])
    # a fresh interpreter: the runner must not import detectron2 (nor hcformer)
    run = (
        "import runpy, sys; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "imported = sorted(m for m in sys.modules if m.split('.')[0] in ('detectron2', 'hcformer'))\n"
        "assert not imported, imported\n"
    )
    subprocess.run(
        [sys.executable, "-c", run, str(ROOT / "tools/run_exported.py"), "--exported", str(tmp_path / "exported"),
         "--input", photo, "--output", str(tmp_path / "deployed"), "--save-predictions", "--confidence-threshold", "0.3"],
        check=True, timeout=300,
    )
    eager, deployed = tmp_path / "eager", tmp_path / "deployed"
    panoptic = np.asarray(Image.open(eager / "image_panoptic.png"))
    assert panoptic.shape == (375, 500, 3)
    assert len(np.unique(panoptic.reshape(-1, 3), axis=0)) >= 3  # two segments and unlabelled pixels at least
    assert np.array_equal(np.asarray(Image.open(deployed / "image_panoptic.png")), panoptic)
    assert json.loads((deployed / "image_panoptic.json").read_text()) == json.loads((eager / "image_panoptic.json").read_text())
    assert np.array_equal(np.asarray(Image.open(deployed / "image_sem_seg.png")), np.asarray(Image.open(eager / "image_sem_seg.png")))
    eager_instances = json.loads((eager / "image_instances.json").read_text())
    deployed_instances = json.loads((deployed / "image_instances.json").read_text())
    assert len(eager_instances) > 0 and len(deployed_instances) == len(eager_instances)
    for a, b in zip(deployed_instances, eager_instances):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        # binary masks (logit > 0) of an untrained model: a few pixels sit at 0 within rounding
        assert mask_util.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0] > 0.999
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1)
    assert Image.open(deployed / "image.png").size == (500, 375)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--format", "tflite"], "--format 'tflite' is not supported: choose one of onnx, torchscript"),
        (["--format", "onnx", "--height", "100", "--width", "64"], "--height 100 is not a multiple of 32"),
        (["--format", "onnx", "MODEL.WEIGHTS", "missing/model.pth"], "MODEL.WEIGHTS: no such file: missing/model.pth"),
    ],
    ids=["format", "size", "weights"],
)
def test_bad_export_requests_give_one_error_line(tmp_path, capsys, flags, message):
    argv = ["--config-file", str(SHAPES), "--output", str(tmp_path / "out"), *flags]
    assert export_tool.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_runner_refuses_a_directory_that_is_no_export(tmp_path, capsys):
    runner = load_script("tools/run_exported.py")
    argv = ["--exported", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    assert runner.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "export.json: no such file" in errors[0]

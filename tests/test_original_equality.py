"""Same numbers as the original HCFormer: the COCO panoptic R50 config, its state-dict layout and
formula weights (tests/original_reference.py), one fixed 256×384 image, compared with what the
original implementation computed (tests/data/original_hcformer_R50_coco_panoptic_256x384.npz).

Tolerances are fp32 rounding: the original and this project agree to ~1e-5 here; a changed
computation (e.g. the positional encoding's −0.5 centring) moves ``sem_seg`` by ~1e-2. Where
torch sees a CUDA device, the model is held to the same numbers there too, with TF32 off
(cuDNN's default TF32 convolutions round their inputs to 10 bits of mantissa, ~1e-3).
"""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from hcformer.config import add_hcformer_config
from original_reference import formula_state_dict, load_reference, reference_image

CONFIG = "coco/panoptic-segmentation/hcformer_R50_bs16_50ep.yaml"
CONFIGS = Path(__file__).parents[1] / "configs"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return load_reference("original_hcformer_R50_coco_panoptic_256x384")


@pytest.fixture(scope="module", params=[
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
])
def outputs(reference, request):
    """Our model with formula weights on the reference image: head outputs and final results
    (on the CPU, whatever device computed them)."""
    assert reference["meta"]["config"] == CONFIG
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(CONFIGS / CONFIG))
    cfg.MODEL.DEVICE = request.param
    model = build_model(cfg).eval()
    state = model.state_dict()
    layout = {k: tuple(v.shape) for k, v in state.items()}
    model.load_state_dict(formula_state_dict(state))
    image = reference_image().float()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's fp32 convolutions in fp32 (module docstring)
    try:
        with torch.no_grad():
            head, hierarchy = model.run(model.preprocess([{"image": image}]))
            head["pred_masks"] = hierarchy.decode(head["pred_masks"])  # stride 32 → stride 4
            (result,) = model([{"image": image, "height": 256, "width": 384}])
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    head = {k: head[k].cpu() for k in ("pred_logits", "pred_masks")}
    panoptic, segments = result["panoptic_seg"]
    instances = result["instances"].to("cpu")
    result = {"sem_seg": result["sem_seg"].cpu(), "panoptic_seg": (panoptic.cpu(), segments), "instances": instances}
    return {"layout": layout, "head": head, "result": result}


def test_state_dict_layout_is_the_originals(reference, outputs):
    ours, theirs = outputs["layout"], reference["keys"]
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


def test_head_outputs_equal_the_originals(reference, outputs):
    logits = outputs["head"]["pred_logits"][0]
    masks = outputs["head"]["pred_masks"][0]  # decoded to stride 4: (Q, H/4, W/4)
    assert masks.shape == (100, 64, 96)
    torch.testing.assert_close(logits, reference["pred_logits"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(masks[:, ::2, ::2], reference["pred_masks_stride4_sub2"], atol=TOLERANCE, rtol=0)


def test_sem_seg_equals_the_originals(reference, outputs):
    sem_seg = outputs["result"]["sem_seg"]
    assert sem_seg.shape == (133, 256, 384)
    torch.testing.assert_close(sem_seg[:, ::8, ::8], reference["sem_seg_sub8"], atol=TOLERANCE, rtol=0)
    # the argmax everywhere, except where two classes are tied to within the tolerance
    top2 = sem_seg.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > TOLERANCE
    differs = sem_seg.argmax(0) != reference["sem_seg_argmax"].long()
    assert not (differs & decided).any()


def test_panoptic_and_instances_equal_the_originals(reference, outputs):
    panoptic, segments = outputs["result"]["panoptic_seg"]
    assert torch.equal(panoptic.int(), reference["panoptic_seg"])
    assert segments == reference["meta"]["segments_info"]
    instances = outputs["result"]["instances"]
    assert torch.equal(instances.pred_classes, reference["instance_classes"])
    torch.testing.assert_close(instances.scores, reference["instance_scores"], atol=1e-5, rtol=0)
    assert torch.equal(instances.pred_masks.flatten(1).sum(1).float(), reference["instance_mask_areas"])


@pytest.mark.parametrize("enc_layers", [0, 2])
def test_maskformer_decoder_keys_and_enc_layers_mean_what_they_mean_in_the_original(enc_layers):
    """MFDec: the final LayerNorm is ``transformer.decoder.norm``; ENC_LAYERS encoder layers sit in
    ``transformer.encoder.layers`` of the decoder, while the HCFormer+ encoder keeps its 6 layers."""
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "coco/panoptic-segmentation/hcformer+_R50_MFDec_bs16_100ep.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.ENC_LAYERS", enc_layers])
    keys = build_model(cfg).state_dict().keys()
    prefix = "sem_seg_head.predictor."
    assert prefix + "transformer.decoder.norm.weight" in keys and prefix + "decoder_norm.weight" not in keys
    encoder = {k.split(".")[5] for k in keys if k.startswith(prefix + "transformer.encoder.layers.")}
    assert encoder == {str(i) for i in range(enc_layers)}
    decoder = {k.split(".")[5] for k in keys if k.startswith(prefix + "transformer.decoder.layers.")}
    assert len(decoder) == cfg.MODEL.MASK_FORMER.DEC_LAYERS
    aux = {k.split(".")[4] for k in keys if k.startswith("backbone.aux.encoder.layers.")}
    assert aux == {str(i) for i in range(6)}

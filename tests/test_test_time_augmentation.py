"""Semantic test-time augmentation: output size, identity with one augmentation, flips undone."""
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from hcformer.modeling.test_time_augmentation import SemanticSegmentorWithTTA


def _input(h=32, w=48, height=64, width=96):
    torch.manual_seed(0)
    return {"image": (torch.rand(3, h, w) * 255).to(torch.uint8), "height": height, "width": width}


def _tta_cfg(make_cfg, min_sizes, flip):
    return make_cfg(**{"TEST.AUG.MIN_SIZES": min_sizes, "TEST.AUG.MAX_SIZE": 1000, "TEST.AUG.FLIP": flip})


def test_one_augmentation_at_the_input_size_is_the_plain_model(make_cfg):
    cfg = _tta_cfg(make_cfg, (32,), False)  # short edge 32: the input's own size, no flip
    model = build_model(cfg).eval()
    x = _input()
    with torch.no_grad():
        expected = model([x])[0]["sem_seg"]
    (out,) = SemanticSegmentorWithTTA(cfg, model)([x])
    assert list(out) == ["sem_seg"]
    torch.testing.assert_close(out["sem_seg"], expected)


def test_multi_scale_and_flip_give_scores_at_the_original_size(make_cfg):
    cfg = _tta_cfg(make_cfg, (32, 48), True)
    model = build_model(cfg).eval()
    outputs = SemanticSegmentorWithTTA(cfg, model, batch_size=2)([_input(), _input(40, 40, 40, 40)])
    assert [o["sem_seg"].shape for o in outputs] == [(6, 64, 96), (6, 40, 40)]
    assert all(torch.isfinite(o["sem_seg"]).all() for o in outputs)


class _ScoresAreTheImage(nn.Module):
    """A "model" whose class scores are the (float) image itself, at the input size."""

    semantic_on = True

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, batched_inputs):
        self.batch_sizes.append(len(batched_inputs))
        return [{"sem_seg": x["image"].float()} for x in batched_inputs]


def test_flipped_copies_are_flipped_back(make_cfg):
    cfg = _tta_cfg(make_cfg, (32,), True)
    model = _ScoresAreTheImage()
    x = _input(32, 48, 32, 48)
    (out,) = SemanticSegmentorWithTTA(cfg, model, batch_size=2)([x])
    # (image + unflip(flip(image))) / 2 = image; without the unflip it would be the mirror average
    torch.testing.assert_close(out["sem_seg"], x["image"].float())
    assert model.batch_sizes == [2]  # both copies in one call


def test_refuses_a_model_without_semantic_output(make_cfg):
    cfg = make_cfg(**{"MODEL.MASK_FORMER.TEST.SEMANTIC_ON": False})
    with pytest.raises(ValueError, match="SEMANTIC_ON"):
        SemanticSegmentorWithTTA(cfg, build_model(cfg))

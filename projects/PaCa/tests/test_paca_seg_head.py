"""The PaCa segmentation head: forward, both losses, gradients, eval output, published size."""
from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from fvcore.nn import parameter_count

from paca.engine import get_paca_cfg
from paca.modeling import PaCaSegHead

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPES = {
    "res2": ShapeSpec(channels=16, stride=4),
    "res3": ShapeSpec(channels=24, stride=8),
    "res4": ShapeSpec(channels=32, stride=16),
    "res5": ShapeSpec(channels=40, stride=32),
}


def _features(batch: int = 2, size: int = 64):
    return {k: torch.randn(batch, s.channels, size // s.stride, size // s.stride) for k, s in SHAPES.items()}


def test_head_is_registered():
    assert SEM_SEG_HEADS_REGISTRY.get("PaCaSegHead") is PaCaSegHead


def test_forward_losses_and_gradients():
    torch.manual_seed(0)
    head = PaCaSegHead(SHAPES, num_classes=5, channels=32).train()
    features = _features()
    targets = torch.randint(0, 5, (2, 64, 64))
    targets[0, :8] = 255  # ignored
    results, losses = head(features, targets)
    assert results is None and set(losses) == {"loss_sem_seg", "loss_cluster"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert head.to_clusters.weight.grad.abs().sum() > 0 and head.classifier.weight.grad.abs().sum() > 0
    assert head.key.linear.weight.grad.abs().sum() > 0


def test_auxiliary_loss_is_cross_entropy_of_the_cluster_logits():
    torch.manual_seed(0)
    head = PaCaSegHead(SHAPES, num_classes=5, channels=32, aux_loss_weight=0.4).train()
    features = _features()
    targets = torch.randint(0, 5, (2, 64, 64))
    captured = []
    head.to_clusters.register_forward_hook(lambda m, i, out: captured.append(out))
    _, losses = head(features, targets)
    upsampled = torch.nn.functional.interpolate(captured[0], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(losses["loss_cluster"], 0.4 * torch.nn.functional.cross_entropy(upsampled, targets))


def test_eval_returns_logits_at_input_size():
    head = PaCaSegHead(SHAPES, num_classes=5, channels=32).eval()
    with torch.no_grad():
        logits, losses = head(_features(batch=1))
    assert logits.shape == (1, 5, 64, 64) and losses == {}


def test_bad_norm_is_refused():
    with pytest.raises(ValueError, match="NORM"):
        PaCaSegHead(SHAPES, num_classes=5, norm="GN")


def test_paca_tiny_with_head_has_the_published_size():
    """Paper Table 3: PaCa-Tiny + PaCa head on ADE20K (M = 200, 150 classes), 13.3M."""
    cfg = get_paca_cfg()
    cfg.merge_from_file(str(CONFIGS / "ade20k/semantic-segmentation/paca_head_paca_tiny_bs16_160k.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    params = parameter_count(build_model(cfg))[""] / 1e6
    assert abs(params / 13.3 - 1) < 0.01, params

"""Optimizer parameter groups, full-model gradient clipping and LR schedules."""
import math
from typing import Dict, List

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from torch import nn

from hcformer.config import add_hcformer_config
from hcformer.solver import build_lr_scheduler, build_optimizer


class _Clustering(nn.Module):
    def __init__(self):
        super().__init__()
        self.fine_norm = nn.LayerNorm(8)
        self.fine_emb = nn.Conv2d(8, 4, 1, bias=False)
        self.temp = nn.Parameter(torch.tensor([0.1]))


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.frozen = nn.Conv2d(8, 8, 1)
        self.frozen.requires_grad_(False)
        self.clustering_layers = nn.ModuleList([_Clustering()])
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_embed = nn.Embedding(5, 8)
        self.norm = nn.GroupNorm(2, 8)
        self.class_embed = nn.Linear(8, 3)
        self.tied = nn.Linear(8, 8)
        self.tied_again = self.tied  # the same parameters under two names


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.sem_seg_head = _Head()


def _cfg(**solver) -> CfgNode:
    cfg = get_cfg()
    add_hcformer_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.01
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def _hyperparams_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, dict]:
    name_of = {}
    for name, param in model.named_parameters():  # tied parameters are listed once
        name_of[param] = name
    found: Dict[str, dict] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = name_of[param]
            assert name not in found, f"{name} is in two parameter groups"
            found[name] = {"lr": group["lr"], "weight_decay": group["weight_decay"]}
    return found


def test_param_groups():
    model = _Model()
    found = _hyperparams_by_name(model, build_optimizer(_cfg(), model))

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(found) == trainable
    expected = {
        "backbone.conv.weight": (1e-5, 0.05),
        "backbone.conv.bias": (1e-5, 0.05),
        "backbone.bn.weight": (1e-5, 0.0),
        "backbone.bn.bias": (1e-5, 0.0),
        "backbone.clustering_layers.0.fine_norm.weight": (1e-5, 0.0),
        "backbone.clustering_layers.0.fine_emb.weight": (1e-5, 0.05),
        "backbone.clustering_layers.0.temp": (1e-5, 0.0),
        "backbone.relative_position_bias_table": (1e-5, 0.0),
        "sem_seg_head.query_embed.weight": (1e-4, 0.01),
        "sem_seg_head.norm.weight": (1e-4, 0.0),
        "sem_seg_head.class_embed.weight": (1e-4, 0.05),
        "sem_seg_head.tied.weight": (1e-4, 0.05),
    }
    for name, (lr, decay) in expected.items():
        assert found[name]["lr"] == pytest.approx(lr), name
        assert found[name]["weight_decay"] == decay, name


def test_optimizer_types():
    model = _Model()
    assert isinstance(build_optimizer(_cfg(), model), torch.optim.AdamW)
    sgd = build_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.9), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), model)


def _set_grads(params: List[nn.Parameter], value: float) -> None:
    for p in params:
        p.grad = torch.full_like(p, value)


def test_full_model_clipping_clips_the_global_norm():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    params = list(model.parameters())
    cfg = _cfg(OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    optimizer = build_optimizer(cfg, model)

    before = [p.detach().clone() for p in params]
    _set_grads(params, 1.0)  # global norm sqrt(34): every tensor on its own is also above 0.5
    optimizer.step()

    # With SGD at lr 1 the update is the clipped gradient: one vector of norm 0.5, whose
    # direction (all entries equal) is kept, so each tensor's share is sqrt(numel / 34) of it.
    updates = [b - p.detach() for b, p in zip(before, params)]
    total = math.sqrt(sum(u.pow(2).sum().item() for u in updates))
    assert total == pytest.approx(0.5, rel=1e-5)
    n = sum(p.numel() for p in params)
    for u in updates:
        assert torch.allclose(u, torch.full_like(u, 0.5 / math.sqrt(n)))


def test_full_model_clipping_leaves_small_gradients():
    model = nn.Linear(4, 1)
    cfg = _cfg(OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 10.0
    optimizer = build_optimizer(cfg, model)
    before = model.weight.detach().clone()
    _set_grads(list(model.parameters()), 0.01)
    optimizer.step()
    assert torch.allclose(before - model.weight.detach(), torch.full_like(before, 0.01))


def _lrs(cfg: CfgNode, iterations: List[int]) -> List[float]:
    """LR of the (single) parameter group at each of ``iterations``, stepping as the
    trainer does (one scheduler step after each iteration)."""
    optimizer = build_optimizer(cfg, nn.Linear(1, 1))
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for it in range(max(iterations) + 1):
        if it > 0:
            optimizer.step()
            scheduler.step()
        if it in iterations:
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_poly_schedule_closed_form():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=1000, WARMUP_ITERS=0, POLY_LR_POWER=0.9
    )
    iterations = [0, 1, 250, 500, 999, 1000]
    expected = [1e-4 * (1 - it / 1000) ** 0.9 for it in iterations]
    assert _lrs(cfg, iterations) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_poly_schedule_constant_ending():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR",
        MAX_ITER=1000,
        WARMUP_ITERS=0,
        POLY_LR_POWER=0.9,
        POLY_LR_CONSTANT_ENDING=0.1,
    )
    iterations = [0, 500, 900, 950, 1000]
    expected = [1e-4 * max((1 - it / 1000) ** 0.9, 0.1) for it in iterations]
    assert _lrs(cfg, iterations) == pytest.approx(expected, rel=1e-9)
    assert _lrs(cfg, [1000])[0] == pytest.approx(1e-5)


def test_poly_schedule_linear_warmup():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR",
        MAX_ITER=1000,
        WARMUP_ITERS=100,
        WARMUP_FACTOR=0.1,
        WARMUP_METHOD="linear",
        POLY_LR_POWER=0.9,
    )
    end_of_warmup = 0.9**0.9  # the poly multiplier at iteration 100
    iterations = [0, 50, 100, 500]
    expected = [
        1e-4 * 0.1,
        1e-4 * (0.1 + (end_of_warmup - 0.1) * 0.5),  # linear from 0.1 to the poly value
        1e-4 * end_of_warmup,
        1e-4 * 0.5**0.9,
    ]
    assert _lrs(cfg, iterations) == pytest.approx(expected, rel=1e-9)


def test_multistep_schedule_is_detectron2s():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupMultiStepLR",
        MAX_ITER=100,
        STEPS=(90, 95),
        GAMMA=0.1,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=1.0,
    )
    assert _lrs(cfg, [0, 5, 89, 90, 95]) == pytest.approx([1e-4, 1e-4, 1e-4, 1e-5, 1e-6])


def test_cpu_adamw_is_fused_and_matches_torchs_reference_loop():
    """On the CPU the AdamW is torch's fused kernel (one pass per parameter); its updates, with
    weight decay and full-model clipping, equal those of torch's single-tensor loop."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    reference_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    reference_model.load_state_dict(model.state_dict())
    cfg = _cfg(OPTIMIZER="ADAMW", BASE_LR=1e-2, WEIGHT_DECAY=0.05)
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    optimizer = build_optimizer(cfg, model)
    assert all(group["fused"] for group in optimizer.param_groups)
    reference = torch.optim.AdamW(reference_model.parameters(), lr=1e-2, weight_decay=0.05, foreach=False)
    for _ in range(5):
        x = torch.randn(2, 3, 6, 6)
        for net, opt in ((model, optimizer), (reference_model, reference)):
            opt.zero_grad()
            net(x).square().sum().backward()
            if opt is reference:
                torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
            opt.step()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)

"""On a CUDA device, the computations the CPU tests check: the local clustering primitive and the
DCNv2 backends against their definitions, the whole model against the same model on the CPU
(inference outputs, training losses and gradients), mixed-precision training, and
``train_net.py`` trained on the GPU and evaluated on the GPU and on the CPU.

Skipped where torch sees no CUDA device (CI's machines have none); `make test-cuda` runs them.
The equality with the original HCFormer on CUDA is in tests/test_original_equality.py.

fp32 comparisons turn TF32 off (``exact_fp32``): on Ampere and later GPUs cuDNN's convolutions
use TF32 by default, which rounds their inputs to 10 mantissa bits (~1e-3 relative).
"""
import math

import pytest
import torch
from detectron2.modeling import build_model
from test_hcformer_model import _sample
from tiny_configs import task_cfg
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from hcformer.layers.deform_conv import modulated_deform_conv2d, resolved_backend, use_backend
from hcformer.layers.local_clustering import affinity, gather, scatter
from hcformer.layers.local_clustering import use_backend as use_clustering_backend

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device on this machine"),
]
CUDA = torch.device("cuda")


@pytest.fixture
def exact_fp32():
    """fp32 matrix products and convolutions in fp32 on the GPU, for the length of a test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------- the primitive
def _clustering_products(fine, coarse, valid, grid, kernel, out_grads):
    """affinity → softmax → gather and scatter, with the gradients of both inputs."""
    fine, coarse = fine.clone().requires_grad_(), coarse.clone().requires_grad_()
    weights = affinity(fine, coarse, grid, kernel, coarse_valid=valid).softmax(1)
    outputs = [weights, gather(coarse, weights, grid, kernel), scatter(fine, weights, coarse.shape[-2:], grid, kernel)[0]]
    grads = torch.autograd.grad(outputs, (fine, coarse), out_grads)
    return [t.detach().cpu() for t in outputs + list(grads)]


@pytest.mark.parametrize("backend", ["unfold", "blocked", "reference"])
@pytest.mark.parametrize("B,C,H,W,grid,kernel", [(2, 64, 37, 50, 2, 3), (1, 32, 64, 64, 4, 3), (2, 16, 30, 22, 2, 7)])
def test_local_clustering_on_cuda_computes_the_definition(backend, B, C, H, W, grid, kernel):
    """Each backend on the GPU in fp32 against the definition on the CPU in fp64."""
    g = torch.Generator().manual_seed(0)
    h, w = -(-H // grid), -(-W // grid)
    K = kernel * kernel
    fine, coarse = torch.randn(B, C, H, W, generator=g), torch.randn(B, C, h, w, generator=g)
    valid = torch.rand(B, 1, h, w, generator=g) > 0.2
    out_grads = [torch.randn(B, K, H, W, generator=g), torch.randn(B, C, H, W, generator=g),
                 torch.randn(B, C, h, w, generator=g)]
    with use_clustering_backend("reference"):
        want = _clustering_products(fine.double(), coarse.double(), valid, grid, kernel, [t.double() for t in out_grads])
    with use_clustering_backend(backend):
        got = _clustering_products(fine.to(CUDA), coarse.to(CUDA), valid.to(CUDA), grid, kernel,
                                   [t.to(CUDA) for t in out_grads])
    for name, a, b in zip(["weights", "gather", "scatter", "grad fine", "grad coarse"], got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


# Largest error allowed for unit-variance inputs, C = 64 (logits of ~±8): bf16 keeps 8 bits of
# mantissa, fp16 11, so bf16's logits are ~8 times coarser. Seen on an H200: bf16 0.146 at 4 of
# 786,432 outputs (0.1 failed there), fp16 under 0.1.
HALF_TOLERANCE = {torch.float16: 0.1, torch.bfloat16: 0.3}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["unfold", "blocked"])
def test_local_clustering_under_autocast_on_cuda_is_close_to_fp32(dtype, backend):
    torch.manual_seed(0)
    fine, coarse = torch.randn(2, 64, 64, 96, device=CUDA), torch.randn(2, 64, 32, 48, device=CUDA)
    with use_clustering_backend(backend):
        reference = gather(coarse, affinity(fine, coarse).softmax(1))
        with torch.autocast("cuda", dtype=dtype):
            out = gather(coarse.to(dtype), affinity(fine.to(dtype), coarse.to(dtype)).softmax(1))
    assert out.dtype == dtype
    error = (out.float() - reference).abs()
    assert error.max() < HALF_TOLERANCE[dtype], error.max()
    assert error.mean() < HALF_TOLERANCE[dtype] / 20, error.mean()  # the bulk: rounding, not a wrong candidate


# ---------------------------------------------------------------------------- DCNv2
@pytest.mark.parametrize("backend", ["auto", "sampled", "bag"])
def test_deform_conv_backends_on_cuda_match_torchvision_on_the_cpu(backend, exact_fp32):
    g = torch.Generator().manual_seed(0)
    B, C, O, H, W, stride = 2, 32, 48, 29, 41, 2
    Ho, Wo = (H + 2 - 3) // stride + 1, (W + 2 - 3) // stride + 1
    x = torch.randn(B, C, H, W, generator=g)
    offset = torch.randn(B, 18, Ho, Wo, generator=g) * 3  # many taps outside the image
    mask = torch.rand(B, 9, Ho, Wo, generator=g)
    weight, bias = torch.randn(O, C, 3, 3, generator=g) / 17, torch.randn(O, generator=g)
    probe = torch.randn(B, O, Ho, Wo, generator=g)

    def values_and_grads(device, fn):
        inputs = [t.to(device).requires_grad_() for t in (x, offset, mask, weight, bias)]
        out = fn(*inputs)
        grads = torch.autograd.grad((out * probe.to(device)).sum(), inputs)
        return [t.detach().cpu() for t in (out, *grads)]

    want = values_and_grads("cpu", lambda x, o, m, w, b: torchvision_deform_conv2d(x, o, w, b, stride, 1, mask=m))
    with use_backend(backend):
        assert resolved_backend(CUDA) == ("torchvision" if backend == "auto" else backend)
        got = values_and_grads(CUDA, lambda x, o, m, w, b: modulated_deform_conv2d(x, o, m, w, b, stride, 1))
    for name, a, b in zip(["out", "x", "offset", "mask", "weight", "bias"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------- the model
def _tiny_model(device: str, **overrides):
    cfg = task_cfg("panoptic", **{"MODEL.DEVICE": device, "MODEL.RESNETS.DOWNSAMPLING": "deform", **overrides})
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("level", [1, 3])
def test_model_on_cuda_infers_what_it_infers_on_the_cpu(level, exact_fp32):
    """The head's class logits and masks decoded through the hierarchy, and ``sem_seg``, of two
    images of different sizes (one padded in the batch). Panoptic and instance results of the
    real config on CUDA are held to the original's in tests/test_original_equality.py."""
    cpu = _tiny_model("cpu", **{"MODEL.HC.LEVEL": level}).eval()
    gpu = _tiny_model("cuda", **{"MODEL.HC.LEVEL": level}).eval()
    gpu.load_state_dict(cpu.state_dict())
    inputs = [{"image": _sample(h, w)["image"], "height": h, "width": w} for h, w in [(96, 128), (80, 112)]]
    results = []
    with torch.no_grad():
        for model in (cpu, gpu):
            outputs, hierarchy = model.run(model.preprocess(inputs))
            masks = hierarchy.decode(outputs["pred_masks"])
            sem_seg = [r["sem_seg"].cpu() for r in model(inputs)]
            results.append([outputs["pred_logits"].cpu(), masks.cpu(), *sem_seg])
    assert results[1][1].shape[-2:] == (96 // 2 ** (5 - level), 128 // 2 ** (5 - level))
    for name, a, b in zip(["pred_logits", "decoded masks", "sem_seg 0", "sem_seg 1"], results[1], results[0]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def _network_outputs_and_gradients(model, batch):
    """Training-mode forward of backbone + head (every decoder layer's class logits and masks
    decoded through the hierarchy) and the parameters' gradients of a fixed probe of them."""
    outputs, hierarchy = model.run(model.preprocess(batch))
    layers = [outputs] + outputs["aux_outputs"]
    tensors = [t for o in layers for t in (o["pred_logits"], hierarchy.decode(o["pred_masks"]))]
    g = torch.Generator().manual_seed(0)
    probe = sum((t * torch.randn(t.shape, generator=g).to(t.device)).sum() for t in tensors)
    probe.backward()
    grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
    return [t.detach().cpu() for t in tensors], grads


def test_training_forward_and_gradients_on_cuda_equal_the_cpus(exact_fp32):
    """The network in training mode (batch norm on batch statistics, a padded image): the same
    outputs and gradients on both devices. (The losses draw their points from each device's own
    random generator, so they are compared in the next test.)"""
    cpu = _tiny_model("cpu").train()
    gpu = _tiny_model("cuda").train()
    gpu.load_state_dict(cpu.state_dict())
    batch = [_sample(64, 96, (1, 4)), _sample(48, 80, (2, 3, 5))]  # the second padded
    (out_cpu, grads_cpu), (out_gpu, grads_gpu) = (_network_outputs_and_gradients(m, batch) for m in (cpu, gpu))
    for a, b in zip(out_gpu, out_cpu):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert grads_gpu.keys() == grads_cpu.keys() and len(grads_cpu) > 50
    for name in grads_cpu:
        scale = grads_cpu[name].abs().max().item()
        torch.testing.assert_close(grads_gpu[name], grads_cpu[name], atol=1e-3 * scale + 1e-6, rtol=0,
                                   msg=lambda m: f"grad {name}: {m}")


def test_training_losses_on_cuda_are_the_cpus_up_to_the_sampled_points(exact_fp32):
    """The loss dict on both devices: the same terms, and values that differ only as much as
    two draws of the sampled points make them differ (a few percent at 256 points)."""
    cpu = _tiny_model("cpu").train()
    gpu = _tiny_model("cuda").train()
    gpu.load_state_dict(cpu.state_dict())
    batch = [_sample(64, 96, (1, 4)), _sample(48, 80, (2, 3, 5))]
    losses_cpu, losses_gpu = ({k: v.item() for k, v in m(batch).items()} for m in (cpu, gpu))
    assert losses_gpu.keys() == losses_cpu.keys()
    assert losses_gpu["loss_scale_reg"] == pytest.approx(losses_cpu["loss_scale_reg"], rel=1e-6)
    for name in losses_cpu:
        assert losses_gpu[name] == pytest.approx(losses_cpu[name], rel=0.1, abs=0.02), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_training_on_cuda(dtype):
    """Autocast + gradient scaling as detectron2's AMPTrainer runs them: the first step's losses
    are fp32's within 10 % (rounding can change a match: bf16 moved an auxiliary class loss by
    5 % on the CPU), and eight steps lower the loss."""
    model = _tiny_model("cuda").train()
    batch = [_sample(64, 96, (1, 4)), _sample(48, 80, (2, 3, 5))]
    torch.manual_seed(1)
    fp32 = {k: v.item() for k, v in model(batch).items()}
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler("cuda")
    total = []
    for step in range(8):
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=dtype):
            losses = model(batch)
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        if step == 0:
            for name, value in losses.items():
                assert value.item() == pytest.approx(fp32[name], rel=0.1, abs=1e-2), name
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total.append(loss.item())
    assert total[-1] < total[0], total


# ---------------------------------------------------------------------------- train_net.py
@pytest.mark.slow
def test_train_net_on_cuda_then_eval_only_on_cuda_and_on_the_cpu(tmp_path):
    """Training with AMP on the GPU writes a checkpoint; ``--eval-only`` of it on the GPU gives
    what training's final evaluation gave, and on the CPU the same within rounding (TF32)."""
    from test_eval_only import EXPECTED_METRICS, train_net, without_nan

    on_gpu = ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"]
    trained, log = train_net(tmp_path, "train", "SEED", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "20",
                             "SOLVER.CHECKPOINT_PERIOD", "100", *on_gpu)
    assert "AMP needs CUDA" not in log and "CUDA is not available" not in log
    weights = str(tmp_path / "train" / "model_final.pth")
    on_cuda, _ = train_net(tmp_path, "eval_cuda", "--eval-only", "MODEL.WEIGHTS", weights, *on_gpu)
    on_cpu, _ = train_net(tmp_path, "eval_cpu", "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu")
    assert without_nan(on_cuda) == without_nan(trained)
    for task, metric in EXPECTED_METRICS.items():
        assert math.isfinite(on_cpu[task][metric]), (task, on_cpu[task])
        assert on_cpu[task][metric] == pytest.approx(on_cuda[task][metric], abs=0.5), (task, on_cpu, on_cuda)

"""The local clustering primitive against a dense O(N·M) reference, with every backend, and
the fast backends against the reference one."""
import pytest
import torch

from hcformer.layers import local_clustering_blocked, local_clustering_unfold
from hcformer.layers.local_clustering import (
    affinity,
    candidate_offsets,
    gather,
    hard_assignment,
    resolved_backend,
    scatter,
    set_backend,
    use_backend,
)


def dense_candidates(H, W, h, w, grid, kernel, coarse_valid=None):
    """(H*W, K) flat coarse index of each candidate, -1 where it is excluded."""
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    index = torch.full((H * W, kernel * kernel), -1, dtype=torch.long)
    centre = len(candidate_offsets(kernel)) // 2
    for i in range(H):
        for j in range(W):
            for k, (dy, dx) in enumerate(candidate_offsets(kernel)):
                ci, cj = i // gy + dy, j // gx + dx
                inside = 0 <= ci < h and 0 <= cj < w
                if inside and (coarse_valid is None or coarse_valid[ci, cj] or k == centre):
                    index[i * W + j, k] = ci * w + cj
    return index


def dense_matrix(weights, index, hw):
    """Scatter per-candidate weights (B, K, H, W) into a dense (B, H*W, h*w) matrix."""
    B, K = weights.shape[:2]
    flat = weights.flatten(2).transpose(1, 2)  # (B, HW, K)
    mats = []
    for b in range(B):
        m = flat.new_zeros(flat.shape[1], hw)
        keep = index >= 0
        rows = torch.arange(flat.shape[1])[:, None].expand_as(index)[keep]
        m = m.index_put((rows, index[keep]), flat[b][keep], accumulate=True)
        mats.append(m)
    return torch.stack(mats)


@pytest.fixture(params=[("reference", None), ("blocked", 1), ("blocked", 2**13), ("blocked", 2**30), ("unfold", 1),
                        ("unfold", None)],
                ids=["reference", "blocked-one-row-blocks", "blocked-few-row-blocks", "blocked-whole-batch",
                     "unfold-one-channel-groups", "unfold"])
def backend(request, monkeypatch):
    """The reference backend, the blocked one working in blocks of one coarse row, of a few
    rows, or on all images at once, or the unfold one on one channel at a time or on all."""
    name, chunk_bytes = request.param
    if name == "blocked":
        monkeypatch.setitem(local_clustering_blocked.CHUNK_BYTES, "cpu", chunk_bytes)
    elif name == "unfold" and chunk_bytes is not None:
        monkeypatch.setattr(local_clustering_unfold, "CHUNK_BYTES", chunk_bytes)
    with use_backend(name):
        yield name


def with_layout(x, layout):
    """The same values in another memory layout (what the primitive must not care about)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider map
        wide = x.new_zeros(*x.shape[:-1], 2 * x.shape[-1]).copy_(x.repeat_interleave(2, dim=-1))
        return wide[..., ::2]
    return x.contiguous()


LAYOUTS = ["contiguous", "channels_last", "strided"]

CASES = [  # (B, C, H, W, grid, kernel)
    (2, 5, 8, 8, 2, 3),
    (2, 3, 7, 9, 2, 3),  # odd sizes: coarse 4x5, last row/column half windows
    (1, 4, 12, 10, 4, 3),  # SViT-like grid
    (2, 3, 9, 6, (3, 2), 5),  # anisotropic grid, 5x5 neighbourhood
    (1, 2, 2, 2, 2, 5),  # a 1x1 coarse grid: offsets reach past it on every side
]


def _coarse_hw(H, W, grid):
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    return -(-H // gy), -(-W // gx)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("B,C,H,W,grid,kernel", CASES)
def test_affinity_matches_dense(B, C, H, W, grid, kernel, layout, backend):
    torch.manual_seed(0)
    h, w = _coarse_hw(H, W, grid)
    fine = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    coarse = torch.randn(B, C, h, w, dtype=torch.float64, requires_grad=True)
    out = affinity(with_layout(fine, layout), with_layout(coarse, layout), grid, kernel)
    index = dense_candidates(H, W, h, w, grid, kernel)
    sims = torch.einsum("bcp,bcq->bpq", fine.flatten(2), coarse.flatten(2))  # (B, HW, hw)
    ref = torch.gather(sims, 2, index.clamp(min=0)[None].expand(B, -1, -1))
    ref = ref.masked_fill(index[None] < 0, float("-inf")).transpose(1, 2).reshape(B, -1, H, W)
    assert torch.equal(torch.isinf(out), torch.isinf(ref))
    torch.testing.assert_close(out[~torch.isinf(out)], ref[~torch.isinf(ref)])
    # gradients through a softmax over candidates (what the model uses)
    g1 = torch.autograd.grad(out.softmax(1).pow(2).sum(), (fine, coarse))
    g2 = torch.autograd.grad(ref.softmax(1).pow(2).sum(), (fine, coarse))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_affinity_masks_padding_cells_but_keeps_parent(backend):
    fine = torch.randn(1, 3, 8, 8)
    coarse = torch.randn(1, 3, 4, 4)
    valid = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    valid[..., 3] = False  # last column is padding
    out = affinity(fine, coarse, 2, 3, coarse_valid=valid)
    index = dense_candidates(8, 8, 4, 4, 2, 3, coarse_valid=valid[0, 0])
    assert torch.equal(torch.isinf(out[0]).flatten(1).t(), index < 0)
    assert torch.isfinite(out.softmax(1)).all()  # pixels inside the padding keep their parent


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("B,C,H,W,grid,kernel", CASES)
def test_gather_and_scatter_match_dense(B, C, H, W, grid, kernel, layout, backend):
    torch.manual_seed(1)
    h, w = _coarse_hw(H, W, grid)
    index = dense_candidates(H, W, h, w, grid, kernel)
    K = kernel * kernel
    logits = torch.randn(B, K, H, W, dtype=torch.float64)
    logits = logits.masked_fill((index < 0).t().reshape(1, K, H, W), float("-inf"))
    weights = logits.softmax(1).requires_grad_()
    values = torch.randn(B, C, h, w, dtype=torch.float64, requires_grad=True)
    A = dense_matrix(weights, index, h * w)  # (B, HW, hw)

    out = gather(with_layout(values, layout), with_layout(weights, layout), grid, kernel)
    ref = (A @ values.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
    torch.testing.assert_close(out, ref)
    go = torch.randn_like(out)
    g1 = torch.autograd.grad(out, (values, weights), go)
    g2 = torch.autograd.grad(ref, (values, weights), go)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)

    fine_values = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    sums, norm = scatter(with_layout(fine_values, layout), with_layout(weights, layout), (h, w), grid, kernel)
    A = dense_matrix(weights, index, h * w)
    ref_sums = (A.transpose(1, 2) @ fine_values.flatten(2).transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(sums, ref_sums.reshape(B, C, h, w))
    torch.testing.assert_close(norm, A.sum(1).reshape(B, 1, h, w))
    g1 = torch.autograd.grad(sums.pow(2).sum(), (fine_values, weights))
    g2 = torch.autograd.grad(ref_sums.pow(2).sum(), (fine_values, weights))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fast", ["blocked", "unfold"])
def test_fast_backends_gather_keeps_channels_last(fast):
    values = torch.randn(2, 6, 5, 4).contiguous(memory_format=torch.channels_last)
    weights = torch.randn(2, 9, 10, 8).softmax(1)
    with use_backend(fast):
        out = gather(values, weights)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, gather(values.contiguous(), weights))


@pytest.mark.parametrize("grid,kernel", [(2, 3), ((3, 2), 5)])
def test_gradients_and_double_backward(grid, kernel, backend):
    """gradcheck / gradgradcheck: the fused backward passes, and the composed ones that
    double backward goes through, against finite differences."""
    torch.manual_seed(5)
    B, C, H, W = 2, 2, 5, 4
    h, w = _coarse_hw(H, W, grid)
    K = kernel * kernel
    opts = dict(dtype=torch.float64, requires_grad=True)
    fine, coarse = torch.randn(B, C, H, W, **opts), torch.randn(B, C, h, w, **opts)
    weights = torch.rand(B, K, H, W, **opts)
    checks = {
        "affinity": (lambda f, c: affinity(f, c, grid, kernel).softmax(1), (fine, coarse)),
        "gather": (lambda v, a: gather(v, a, grid, kernel), (coarse, weights)),
        "scatter": (lambda f, a: scatter(f, a, (h, w), grid, kernel), (fine, weights)),
    }
    for name, (fn, inputs) in checks.items():
        # fast mode checks random projections of the Jacobians: seconds instead of minutes
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True), name
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True), name


def test_scatter_is_transpose_of_gather(backend):
    torch.manual_seed(2)
    weights = torch.randn(2, 9, 11, 13).softmax(1)
    x = torch.randn(2, 4, 6, 7)
    y = torch.randn(2, 4, 11, 13)
    lhs = (gather(x, weights) * y).sum()
    rhs = (x * scatter(y, weights, (6, 7))[0]).sum()
    torch.testing.assert_close(lhs, rhs)


def test_bf16_autocast_close_to_fp32(backend):
    torch.manual_seed(3)
    fine = torch.randn(2, 16, 15, 17)
    coarse = torch.randn(2, 16, 8, 9)
    ref_w = affinity(fine, coarse).softmax(1)
    ref = gather(coarse, ref_w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = affinity(fine.bfloat16(), coarse.bfloat16()).softmax(1)
        out = gather(coarse.bfloat16(), w)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_hard_assignment_points_to_argmax_candidate():
    torch.manual_seed(4)
    H, W, h, w = 7, 9, 4, 5
    index = dense_candidates(H, W, h, w, 2, 3)
    logits = torch.randn(2, 9, H, W).masked_fill((index < 0).t().reshape(1, 9, H, W), float("-inf"))
    labels = hard_assignment(logits, (h, w))
    best = logits.argmax(1).flatten(1)  # (B, HW)
    expected = torch.gather(index[None].expand(2, -1, -1), 2, best[..., None])[..., 0]
    assert torch.equal(labels.flatten(1), expected)


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match coarse map"):
        affinity(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 3, 4))


@pytest.mark.parametrize("B,C,H,W,grid,kernel", CASES + [(2, 6, 13, 11, 2, 7)])  # + Expedit's λ = 7
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fast", ["blocked", "unfold"])
def test_fast_backends_compute_the_reference(B, C, H, W, grid, kernel, dtype, fast):
    """A fast backend and the reference: same values and gradients of all three products (with
    padding cells)."""
    torch.manual_seed(6)
    h, w = _coarse_hw(H, W, grid)
    K = kernel * kernel
    fine, coarse = torch.randn(B, C, H, W, dtype=dtype), torch.randn(B, C, h, w, dtype=dtype)
    valid = torch.rand(B, 1, h, w) > 0.3
    out_grads = [torch.randn(B, K, H, W, dtype=dtype), torch.randn(B, C, H, W, dtype=dtype),
                 torch.randn(B, C, h, w, dtype=dtype)]

    def run(name):
        inputs = [t.clone().requires_grad_() for t in (fine, coarse)]
        with use_backend(name):
            weights = affinity(*inputs, grid, kernel, coarse_valid=valid).softmax(1)
            outputs = [weights, gather(inputs[1], weights, grid, kernel), scatter(inputs[0], weights, (h, w), grid, kernel)[0]]
            grads = torch.autograd.grad(outputs, inputs, out_grads)
        return [o.detach() for o in outputs] + list(grads)

    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}
    for got, want in zip(run(fast), run("reference")):
        torch.testing.assert_close(got, want, **tolerance)


def test_backend_switch():
    assert resolved_backend(torch.device("cpu")) == "blocked"  # "auto", the default
    assert resolved_backend(torch.device("meta")) == "unfold"  # any other device, e.g. CUDA
    with use_backend("reference"):
        assert resolved_backend(torch.device("meta")) == "reference"
        assert set_backend("blocked") == "reference"  # set_backend returns the previous one
        assert set_backend("reference") == "blocked"
    assert set_backend("auto") == "auto"  # the context manager restored the default
    with pytest.raises(ValueError, match="unknown local clustering backend 'fast'"):
        set_backend("fast")
"""Super Token Attention against dense references (svit_dense_reference.py)."""
import pytest
import torch
import torch.nn.functional as F

from svit.super_token_attention import SuperTokenAttention, sample_super_tokens
from svit_dense_reference import dense_attention, dense_sampling, to_dense


@pytest.mark.parametrize("grid,size,n_iter", [((4, 4), (12, 20), 1), ((3, 5), (9, 15), 1), ((4, 4), (16, 12), 3)])
def test_association_equals_dense_reference(grid, size, n_iter):
    torch.manual_seed(0)
    x = torch.randn(2, 6, *size)
    tokens, association = sample_super_tokens(x, grid, n_iter)
    dense_tokens, dense_q = dense_sampling(x, grid, n_iter)
    torch.testing.assert_close(to_dense(association, grid), dense_q, atol=1e-6, rtol=1e-5)
    h, w = size[0] // grid[0], size[1] // grid[1]
    torch.testing.assert_close(tokens, dense_tokens.transpose(1, 2).reshape(2, 6, h, w), atol=1e-5, rtol=1e-5)
    # every token's weights sum to one and never reach outside the map
    torch.testing.assert_close(association.sum(1), torch.ones(2, *size))
    assert not association.requires_grad


@pytest.mark.parametrize("size", [(12, 16), (13, 17)])  # grid multiples, and padded + cropped
def test_super_token_attention_equals_dense_reference(size):
    torch.manual_seed(0)
    grid = (4, 4)
    sta = SuperTokenAttention(8, num_heads=2, grid=grid)
    x = torch.randn(2, 8, *size, requires_grad=True)
    out = sta(x)
    assert out.shape == x.shape

    # reference: pad, Q·MHSA(Q̂ᵀX) densely, crop; Q constant as released
    H, W = size
    xp = F.pad(x, (0, -W % 4, 0, -H % 4))
    tokens, q = dense_sampling(xp, grid, 1)
    h, w = xp.shape[-2] // 4, xp.shape[-1] // 4
    mixed = dense_attention(sta.mhsa, tokens.transpose(1, 2).reshape(2, 8, h, w))
    ref = (q @ mixed.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(xp.shape)[..., :H, :W]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)

    grad = torch.randn_like(out)
    params = [x, sta.mhsa.qkv.weight, sta.mhsa.proj.bias]
    got = torch.autograd.grad(out, params, grad)
    expected = torch.autograd.grad(ref, params, grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_grid_one_is_global_attention_with_per_head_qkv_layout():
    torch.manual_seed(0)
    sta = SuperTokenAttention(12, num_heads=3, grid=1)
    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(sta(x), dense_attention(sta.mhsa, x), atol=1e-5, rtol=1e-4)


def test_grid_larger_than_the_map_gives_one_super_token():
    torch.manual_seed(0)
    sta = SuperTokenAttention(4, num_heads=1, grid=8).eval()
    x = torch.randn(1, 4, 5, 3)
    out = sta(x)
    # a single super token: every token gets the same attention output (its softmax has one
    # candidate), the MHSA of the weighted mean
    xp = F.pad(x, (0, 5, 0, 3))
    mean = xp.mean((2, 3), keepdim=True)
    torch.testing.assert_close(out, sta.mhsa(mean).expand_as(out), atol=1e-6, rtol=1e-5)


def test_keep_association_is_cropped_to_the_input():
    sta = SuperTokenAttention(4, num_heads=1, grid=4)
    sta.keep_association = True
    sta(torch.randn(1, 4, 9, 6))
    assert sta.association.shape == (1, 9, 9, 6)

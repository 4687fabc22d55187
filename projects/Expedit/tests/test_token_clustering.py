"""Token clustering / reconstruction on the local clustering primitive vs the dense reference."""
import pytest
import torch
from expedit_dense_reference import dense_clustering, dense_reconstruction

from expedit import SlotLayout, clustering_macs, token_clustering, token_reconstruction

CASES = [
    # tokens, clusters, λ, κ, t, top-k
    ((12, 12), (6, 6), 3, 3, 0.5, 4),  # divisible: grid 2, the primitive directly
    ((12, 12), (8, 8), 7, 5, 0.05, 10),  # Swin-L's 12 → 8: slots (grid 2, 16 × 16)
    ((10, 7), (4, 3), 5, 2, 0.2, 25),  # rectangular, non-divisible, top-k = all candidates
    ((9, 9), (9, 9), 3, 1, 1.0, 9),  # no reduction (grid 1)
]


@pytest.mark.parametrize("tokens,clusters,kernel,iterations,temperature,topk", CASES)
def test_matches_dense_reference(tokens, clusters, kernel, iterations, temperature, topk):
    torch.manual_seed(0)
    x = torch.randn(2, 8, *tokens)
    # smooth features make soft (not one-hot) assignments, which a mistake would show in
    x = x + torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) * 3
    got = token_clustering(x, clusters, kernel, iterations, temperature, topk)
    centres, weights = dense_clustering(x, clusters, kernel, iterations, temperature, topk)
    torch.testing.assert_close(got.centres.double(), centres, rtol=1e-4, atol=1e-4)

    refined = torch.randn_like(got.centres)  # stands in for the blocks' refinement
    rebuilt = token_reconstruction(refined, got)
    torch.testing.assert_close(rebuilt.double(), dense_reconstruction(refined, weights, tokens), rtol=1e-4, atol=1e-4)
    # top-k: at most k non-zero weights per token, unit L2 norm
    slot_weights = got.layout.from_slots(got.weights)
    assert int((slot_weights > 0).sum(1).max()) <= topk
    torch.testing.assert_close(slot_weights.norm(dim=1), torch.ones(2, *tokens))


def test_padding_tokens_join_no_cluster():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 12, 12)
    valid = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    valid[..., :7, :5] = True  # a window on the bottom-right border of the map
    got = token_clustering(x, (8, 8), 5, 3, 0.1, 6, valid)
    centres, weights = dense_clustering(x, (8, 8), 5, 3, 0.1, 6, valid)
    torch.testing.assert_close(got.centres.double(), centres, rtol=1e-4, atol=1e-4)
    assert got.valid[0, 0, :5, :4].all() and not got.valid[0, 0, 5:].any() and not got.valid[0, 0, :, 4:].any()
    rebuilt = token_reconstruction(got.centres, got)
    torch.testing.assert_close(rebuilt.double(), dense_reconstruction(got.centres, weights, (12, 12)), rtol=1e-4, atol=1e-4)
    assert (rebuilt[..., 7:, :] == 0).all()


def test_slots_put_each_token_in_its_pooling_bin():
    layout = SlotLayout((12, 12), (8, 8), torch.device("cpu"))
    assert layout.grid == (2, 2) and layout.slots_hw == (16, 16) and not layout.identity
    assert (layout.rows // 2).tolist() == [i * 8 // 12 for i in range(12)]
    assert len(set(layout.rows.tolist())) == 12  # one slot per token
    x = torch.randn(1, 3, 12, 12)
    assert torch.equal(layout.from_slots(layout.to_slots(x)), x)
    assert SlotLayout((12, 12), (4, 6), torch.device("cpu")).identity


def test_fp32_under_autocast_and_half_inputs():
    x = torch.randn(1, 8, 12, 12).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = token_clustering(x, (8, 8), 7, 2, 0.05, 10)
        rebuilt = token_reconstruction(got.centres.bfloat16(), got)
    assert got.centres.dtype == got.weights.dtype == rebuilt.dtype == torch.float32


def test_macs_count():
    # one 12 × 12 window → 8 × 8 (256 slots), λ = 7, κ = 5, C = 4: 256·49·(6·5 + 5·4 + 4)
    assert clustering_macs(1, 4, (8, 8), (2, 2), 7, 5) == 256 * 49 * (6 * 5 + 5 * 4 + 4)

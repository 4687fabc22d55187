"""CASTHierarchy: decoding against dense matrices, nested hard partitions, pooling."""
import pytest
import torch

from cast.hierarchy import CASTHierarchy
from cast.model import CAST
from hcformer.modeling.hierarchy import Hierarchy


def _random_hierarchy(seed: int = 0) -> CASTHierarchy:
    g = torch.Generator().manual_seed(seed)
    B, K, h, w = 2, 10, 5, 7
    pixel_labels = torch.randint(0, K, (B, h * 8, w * 8), generator=g)
    cell_labels = pixel_labels[:, 4::8, 4::8]
    sizes = [K, 6, 3]  # fine → coarse
    assignments = [torch.rand(B, a, b, generator=g).softmax(-1) for a, b in zip(sizes[:-1], sizes[1:])]
    return CASTHierarchy(cell_labels, assignments[::-1], pixel_labels=pixel_labels)


def test_is_a_hierarchy_with_one_level_per_pooling_plus_superpixels():
    hierarchy = _random_hierarchy()
    assert isinstance(hierarchy, Hierarchy)
    assert hierarchy.num_levels == 3


def test_decode_is_the_product_of_dense_matrices():
    hierarchy = _random_hierarchy()
    x = torch.randn(2, 4, 3, 1)
    out = hierarchy.decode(x)
    assert out.shape == (2, 4, 5, 7)
    for b in range(2):
        one_hot = torch.nn.functional.one_hot(hierarchy.cell_labels[b].flatten(), 10).float()  # (hw, K)
        dense = one_hot @ hierarchy.assignments[1][b] @ hierarchy.assignments[0][b]  # (hw, 3)
        assert torch.allclose(out[b].flatten(1), (dense @ x[b, :, :, 0].T).T, atol=1e-5)
    assert hierarchy.decode(x, 1).shape == (2, 4, 6, 1)
    with pytest.raises(ValueError):
        hierarchy.decode(x, 4)


def test_decode_selected_matches_decode():
    hierarchy = _random_hierarchy()
    x = torch.randn(2, 5, 3, 1)
    batch, channel = torch.tensor([0, 1, 1]), torch.tensor([4, 0, 2])
    assert torch.allclose(hierarchy.decode_selected(x, batch, channel), hierarchy.decode(x)[batch, channel], atol=1e-6)


def test_hard_labels_are_nested_partitions():
    hierarchy = _random_hierarchy()
    maps = [hierarchy.hard_labels(k) for k in range(hierarchy.num_levels + 1)]
    assert all(m.shape == (2, 5, 7) for m in maps)
    assert torch.equal(maps[1], hierarchy.cell_labels)
    for fine, coarse in zip(maps[:-1], maps[1:]):
        for b in range(2):
            # every fine segment lies inside one coarse segment
            pairs = torch.unique(torch.stack([fine[b].flatten(), coarse[b].flatten()]), dim=1)
            assert pairs.shape[1] == torch.unique(fine[b]).numel()
    assert maps[-1].max() < 3
    assert hierarchy.hard_labels(2, output_size=(40, 56)).shape == (2, 40, 56)
    # the same segments at input resolution, with the superpixels' own boundaries
    pixels = [hierarchy.pixel_labels_at(k) for k in range(1, hierarchy.num_levels + 1)]
    assert torch.equal(pixels[0], hierarchy.pixel_labels)
    for fine, coarse in zip(pixels[:-1], pixels[1:]):
        pairs = torch.unique(torch.stack([fine[0].flatten(), coarse[0].flatten()]), dim=1)
        assert pairs.shape[1] == torch.unique(fine[0]).numel()
    assert torch.equal(pixels[-1][:, 4::8, 4::8], maps[-1])  # cells take their centre pixel's segment


def test_pool_averages_and_is_the_transpose_of_decode():
    hierarchy = _random_hierarchy()
    constant = torch.full((2, 3, 5, 7), 2.5)
    assert torch.allclose(hierarchy.pool(constant), torch.full((2, 3, 3, 1), 2.5), atol=1e-5)
    # ⟨decode(x), y⟩ = ⟨x, pool(y)·area⟩: pool times the soft area is decode's adjoint
    x, y = torch.randn(2, 1, 3, 1), torch.randn(2, 1, 5, 7)
    weights = torch.stack([hierarchy.decode(torch.eye(3)[None, :, :, None].expand(2, -1, -1, -1))[b].flatten(1).sum(1)
                           for b in range(2)])  # (B, 3) soft area of every coarse token
    lhs = (hierarchy.decode(x) * y).sum((1, 2, 3))
    rhs = (x[:, 0, :, 0] * hierarchy.pool(y)[:, 0, :, 0] * weights).sum(1)
    assert torch.allclose(lhs, rhs, atol=1e-4)
    # a coarser grid: its cells take their centre cell's superpixel
    assert torch.allclose(hierarchy.pool(torch.full((2, 3, 3, 4), 2.5)), torch.full((2, 3, 3, 1), 2.5), atol=1e-5)


def test_gradients_reach_the_graph_pooling_through_decode():
    torch.manual_seed(0)
    model = CAST(dim=32, num_heads=2, depths=(1, 1), num_tokens=(6, 3), superpixel_size=8, pos_base_size=32)
    out = model(torch.randn(1, 3, 32, 32))
    masks = out.hierarchy.decode(out.pooled[:, 1:].transpose(1, 2)[..., None])
    masks.square().mean().backward()
    assert model.pools[0].refine_attn.qkv.weight.grad.abs().sum() > 0  # through P, not only the tokens

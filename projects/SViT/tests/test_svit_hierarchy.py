"""A stage's super tokens as a hierarchy level: what the hierarchy visualiser and the
undersegmentation evaluation read."""
import pytest
import torch

from hcformer.evaluation import undersegmentation_error
from hcformer.modeling.postprocess import level_clusterings
from hcformer.layers.local_clustering import candidate_offsets
from hcformer.modeling.hierarchy import LocalGridHierarchy
from svit import SViT, SuperTokenAttention, stage_super_tokens, super_token_hierarchy
from svit_dense_reference import to_dense


def tiny_svit() -> SViT:
    torch.manual_seed(0)
    model = SViT(embed_dims=(8, 16, 24, 32), depths=(2, 1, 1, 1), num_heads=(1, 2, 3, 4), stoken_sizes=(4, 2, 1, 1))
    return model.eval()


def test_stage_super_tokens_is_a_local_grid_hierarchy():
    model = tiny_svit()
    images = torch.randn(2, 3, 60, 36)  # stage 0: 15 x 9 tokens, grid 4 -> 4 x 3 super tokens
    hierarchy = stage_super_tokens(model, images, stage=0)
    assert isinstance(hierarchy, LocalGridHierarchy) and hierarchy.num_levels == 1
    assert hierarchy.grid_sizes() == [(4, 3), (15, 9)]
    assert hierarchy.level_strides == ((4, 4), (16, 16))  # the finest cells are 4 x 4
    # the flag and the kept association are reset
    attention = model.layers[0].blocks[-1].attn
    assert not attention.keep_association and attention.association is None

    association = hierarchy.assignments[0]  # (2, 9, 15, 9)
    labels = hierarchy.hard_labels(1)
    # reference: the super token (row-major id on the 4 x 3 grid) of each token's best candidate
    best = association.argmax(1)
    offsets = torch.tensor(candidate_offsets(3))
    rows = torch.arange(15)[:, None] // 4 + offsets[best, 0]
    cols = torch.arange(9)[None, :] // 4 + offsets[best, 1]
    torch.testing.assert_close(labels, rows * 3 + cols)
    assert torch.equal(hierarchy.hard_labels(0)[0], torch.arange(15 * 9).reshape(15, 9))

    # decoding = the dense association times the super-token values
    values = torch.randn(2, 5, 4, 3)
    dense = to_dense(association, (4, 4))  # (2, 135, 12)
    expected = (dense @ values.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 5, 15, 9)
    torch.testing.assert_close(hierarchy.decode(values), expected, atol=1e-6, rtol=1e-5)
    assert hierarchy.decode(values, levels=0) is values


def test_clusterings_and_undersegmentation_error_of_super_tokens():
    model = tiny_svit()
    images = torch.randn(1, 3, 64, 48)
    hierarchy = stage_super_tokens(model, images, stage=1)  # stride 8, grid 2: stride-16 super tokens
    (clusterings,) = level_clusterings(hierarchy, [0, 1], padded_size=(64, 48), image_sizes=[(64, 48)],
                                       output_sizes=[(32, 24)])
    assert set(clusterings) == {"level0", "level1"}
    assert clusterings["level1"].shape == (32, 24)
    assert clusterings["level1"].unique().numel() <= 4 * 3
    gt = torch.zeros(32, 24, dtype=torch.long)
    gt[:, 12:] = 1
    assert 0.0 <= undersegmentation_error(gt, clusterings["level1"]) <= 1.0


def test_super_token_hierarchy_needs_a_kept_association():
    attention = SuperTokenAttention(8, 1, grid=4)
    with pytest.raises(RuntimeError, match="keep_association"):
        super_token_hierarchy(attention, stride=4)
    with pytest.raises(ValueError, match="grid of 1"):
        stage_super_tokens(tiny_svit(), torch.randn(1, 3, 32, 32), stage=2)

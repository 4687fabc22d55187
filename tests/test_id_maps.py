"""resize_ids against a slow exact reference, on the sizes and ids where floating point fails."""
from fractions import Fraction
from math import floor

import pytest
import torch
import torch.nn.functional as F

from hcformer_deploy.id_maps import resize_ids


def exact_nearest(ids: torch.Tensor, size) -> torch.Tensor:
    """out[i, j] = ids[floor(i·H/h), floor(j·W/w)], pixel by pixel in exact rational arithmetic."""
    H, W = ids.shape[-2:]
    h, w = size
    out = ids.new_empty(ids.shape[:-2] + (h, w))
    for i in range(h):
        for j in range(w):
            out[..., i, j] = ids[..., floor(Fraction(i * H, h)), floor(Fraction(j * W, w))]
    return out


@pytest.mark.parametrize("shape,size", [((2, 5, 7), (12, 9)), ((3, 4), (3, 11)), ((2, 16, 12), (64, 48)),
                                        ((1, 9, 13), (4, 5))])
def test_small_maps_as_interpolate(shape, size):
    ids = torch.randint(0, 1000, shape)
    out = resize_ids(ids, size)
    assert out.dtype == torch.int64 and torch.equal(out, exact_nearest(ids, size))
    # where floating point is exact, the source pixels are interpolate's
    flat = ids.reshape(-1, 1, *shape[-2:]).double()
    want = F.interpolate(flat, size=size, mode="nearest").long().reshape(out.shape)
    assert torch.equal(out, want)


def test_ids_above_float32_precision_are_kept():
    ids = 2**24 + torch.arange(6 * 5).reshape(1, 6, 5)  # consecutive ids float32 cannot tell apart
    out = resize_ids(ids, (13, 7))
    assert torch.equal(out, exact_nearest(ids, (13, 7)))
    lossy = F.interpolate(ids[:, None].float(), size=(13, 7), mode="nearest")[:, 0].long()
    assert not torch.equal(lossy, out)


@pytest.mark.parametrize("axis", [-2, -1])
def test_sides_where_a_float32_scale_picks_the_wrong_pixel(axis):
    """4977 → 4804 pixels: interpolate's float32 scale reads a neighbouring source pixel."""
    shape, size = [1, 1], [1, 1]
    shape[axis], size[axis] = 4977, 4804
    ids = torch.arange(4977).reshape(shape)
    out = resize_ids(ids, size)
    assert torch.equal(out, exact_nearest(ids, size))
    rounded = F.interpolate(ids[None, None].double(), size=tuple(size), mode="nearest")[0, 0].long()
    assert not torch.equal(rounded, out)


def test_same_size_is_the_map_itself():
    ids = torch.arange(12).reshape(3, 4)
    assert resize_ids(ids, (3, 4)) is ids

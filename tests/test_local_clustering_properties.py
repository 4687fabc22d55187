"""Properties of the clustering primitive on random shapes (odd sizes included), through the
public functions only: softmax-normalised affinities sum to 1 over the candidates, gathering a
constant map gives that constant, and scatter is the transpose (adjoint) of gather."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcformer.layers.local_clustering import affinity, gather, scatter

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def grids(draw):
    """(batch, channels, fine H, W, coarse h, w, grid (gy, gx), kernel) with odd sizes allowed."""
    gy, gx = draw(st.sampled_from([(2, 2), (1, 2), (3, 3), (2, 3)]))
    kernel = draw(st.sampled_from([1, 3, 5]))
    height, width = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    return (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 5)),
        height,
        width,
        math.ceil(height / gy),
        math.ceil(width / gx),
        (gy, gx),
        kernel,
        draw(st.integers(0, 2**16)),
    )


def softmax_assignment(b, c, height, width, h, w, grid, kernel, generator):
    fine = torch.randn(b, c, height, width, generator=generator, dtype=torch.float64)
    coarse = torch.randn(b, c, h, w, generator=generator, dtype=torch.float64)
    return affinity(fine, coarse, grid, kernel).softmax(dim=1)


@PROPERTY_SETTINGS
@given(grids())
def test_assignment_rows_sum_to_one(shape):
    b, c, height, width, h, w, grid, kernel, seed = shape
    generator = torch.Generator().manual_seed(seed)
    weights = softmax_assignment(b, c, height, width, h, w, grid, kernel, generator)
    assert weights.shape == (b, kernel * kernel, height, width)
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(b, height, width, dtype=torch.float64))


@PROPERTY_SETTINGS
@given(grids(), st.floats(-100, 100, allow_nan=False))
def test_gather_of_a_constant_map_is_constant(shape, value):
    b, c, height, width, h, w, grid, kernel, seed = shape
    generator = torch.Generator().manual_seed(seed)
    weights = softmax_assignment(b, c, height, width, h, w, grid, kernel, generator)
    constant = torch.full((b, 3, h, w), value, dtype=torch.float64)
    out = gather(constant, weights, grid, kernel)
    torch.testing.assert_close(out, torch.full((b, 3, height, width), value, dtype=torch.float64))


@PROPERTY_SETTINGS
@given(grids())
def test_scatter_is_the_adjoint_of_gather(shape):
    """<gather(v, W), u> = <v, scatter(u, W)> for any weights W (normalised or not)."""
    b, c, height, width, h, w, grid, kernel, seed = shape
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(b, kernel * kernel, height, width, generator=generator, dtype=torch.float64)
    coarse_values = torch.randn(b, c, h, w, generator=generator, dtype=torch.float64)
    fine_values = torch.randn(b, c, height, width, generator=generator, dtype=torch.float64)
    left = (gather(coarse_values, weights, grid, kernel) * fine_values).sum()
    sums, normaliser = scatter(fine_values, weights, (h, w), grid, kernel)
    right = (coarse_values * sums).sum()
    torch.testing.assert_close(left, right)
    # the normaliser is the scatter of ones: the total weight each cell receives
    ones_sums, _ = scatter(torch.ones(b, 1, height, width, dtype=torch.float64), weights, (h, w), grid, kernel)
    torch.testing.assert_close(normaliser, ones_sums)

"""Superpixels: SLIC's assignment against a pixel-by-pixel definition; SLIC and SEEDS are
deterministic, cover any image size, follow colour edges; without cv2.ximgproc, SEEDS says what
to install."""
import math

import pytest
import torch
import torch.nn.functional as F

from cast.superpixels import _grid_shape, compute_superpixels, rgb_to_lab, seeds_available, slic


def test_lab_of_known_colours():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T[None, :, :, None]  # (1, 3, 3, 1)
    lab = rgb_to_lab(rgb)[0, :, :, 0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.1)
    assert torch.allclose(lab[1], torch.zeros(3), atol=0.1)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.2)  # sRGB red


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (16, 130)])
def test_slic_labels_cover_any_size(size):
    labels, K = compute_superpixels(torch.rand(2, 3, *size), "SLIC", num_segments=12)
    assert labels.shape == (2, *size) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < K
    assert 6 <= K <= 24  # a grid close to the count asked for


def first_assignment(lab, num_segments, compactness):
    """SLIC's first assignment, pixel by pixel: each pixel joins the nearest of the initial
    centres (the middle pixel of each seed cell) of the seed cells around its own cell that
    exist, by ‖Δlab‖² + (compactness / S)²·‖Δyx‖²; of equal distances the first in row-major
    order of the cells. The home cell is where nearest upsampling of the seed grid puts the pixel."""
    _, _, H, W = lab.shape
    gh, gw = _grid_shape(H, W, num_segments)
    spacing = math.sqrt(H / gh * W / gw)
    home_y = F.interpolate(torch.arange(gh).float().view(1, 1, gh, 1), size=(H, 1), mode="nearest").flatten().long()
    home_x = F.interpolate(torch.arange(gw).float().view(1, 1, 1, gw), size=(1, W), mode="nearest").flatten().long()
    centre_y = [min(int((i + 0.5) * H / gh), H - 1) for i in range(gh)]
    centre_x = [min(int((j + 0.5) * W / gw), W - 1) for j in range(gw)]
    labels = torch.empty(lab.shape[0], H, W, dtype=torch.long)
    for b in range(lab.shape[0]):
        for y in range(H):
            for x in range(W):
                best = None
                for i in range(int(home_y[y]) - 1, int(home_y[y]) + 2):
                    for j in range(int(home_x[x]) - 1, int(home_x[x]) + 2):
                        if not (0 <= i < gh and 0 <= j < gw):
                            continue
                        cy, cx = centre_y[i], centre_x[j]
                        colour = float((lab[b, :, y, x] - lab[b, :, cy, cx]).square().sum())
                        place = (compactness / spacing) ** 2 * ((y - cy) ** 2 + (x - cx) ** 2)
                        if best is None or colour + place < best[0]:
                            best = (colour + place, i * gw + j)
                labels[b, y, x] = best[1]
    return labels


@pytest.mark.parametrize("size, segments", [((13, 17), 6), ((24, 24), 9)])
def test_slic_first_assignment_is_the_definition(size, segments):
    noise = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 100
    flat = torch.zeros(1, 3, *size)  # equal colours: ties between cells everywhere
    flat[:, 0, :, size[1] // 3:] = 50.0
    for lab in (noise, flat):
        got = slic(lab, segments, compactness=10.0, iterations=1)
        wanted = first_assignment(lab, segments, compactness=10.0)
        # the distances are summed in another order: a pixel may flip only on a near tie
        assert (got != wanted).float().mean() < 0.02
        if lab is flat:
            assert torch.equal(got, wanted)  # exact distances (small integers): ties decide


def test_slic_is_deterministic_and_batched():
    images = torch.rand(3, 3, 48, 40)
    labels, _ = compute_superpixels(images, "SLIC", num_segments=20)
    again, _ = compute_superpixels(images, "SLIC", num_segments=20)
    one, _ = compute_superpixels(images[1:2], "SLIC", num_segments=20)
    assert torch.equal(labels, again)
    assert torch.equal(labels[1:2], one)  # images of a batch do not interact


def test_slic_follows_a_colour_edge():
    # a vertical edge at x = 21, off the 4×4 seed grid's cell boundaries (every 12 px)
    lab = torch.zeros(1, 3, 48, 48)
    lab[:, 0, :, 21:] = 80.0
    labels = slic(lab, num_segments=16, compactness=1.0)
    left, right = set(labels[0, :, :21].unique().tolist()), set(labels[0, :, 21:].unique().tolist())
    assert not left & right  # no superpixel straddles the edge


@pytest.mark.parametrize("size", [(37, 53), (64, 64)])
def test_seeds_covers_any_size_and_is_deterministic(size):
    assert seeds_available()  # the project installs opencv-contrib-python-headless
    images = torch.rand(2, 3, *size)
    labels, K = compute_superpixels(images, "SEEDS", num_segments=16)
    again, _ = compute_superpixels(images, "SEEDS", num_segments=16)
    assert labels.shape == (2, *size) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < K
    assert torch.equal(labels, again)


def test_seeds_follows_a_colour_edge():
    image = torch.zeros(1, 3, 48, 48)
    image[:, 0, :, 21:] = 1.0  # black | red
    labels, _ = compute_superpixels(image, "SEEDS", num_segments=16)
    left, right = set(labels[0, :, :21].unique().tolist()), set(labels[0, :, 21:].unique().tolist())
    assert not left & right


def test_seeds_without_ximgproc_says_what_to_install(monkeypatch):
    import cast.superpixels

    monkeypatch.setattr(cast.superpixels, "seeds_available", lambda: False)
    with pytest.raises(RuntimeError, match="opencv-contrib-python-headless"):
        compute_superpixels(torch.rand(1, 3, 32, 32), "SEEDS", num_segments=16)


def test_unknown_method():
    with pytest.raises(ValueError, match="SLIC"):
        compute_superpixels(torch.rand(1, 3, 16, 16), "watershed", num_segments=4)

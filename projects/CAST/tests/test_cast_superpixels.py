"""Superpixels: SLIC and SEEDS are deterministic, cover any image size, follow colour edges;
without cv2.ximgproc, SEEDS says what to install."""
import pytest
import torch

from cast.superpixels import compute_superpixels, rgb_to_lab, seeds_available, slic


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

"""Superpixels for CAST's segment tokens: SLIC (batched torch, deterministic) and SEEDS.

CAST starts from an oversegmentation of the image; its authors use SEEDS (OpenCV contrib
``ximgproc``) on the LAB image. This project installs ``opencv-contrib-python-headless``, so
SEEDS is available (``MODEL.CAST.SUPERPIXEL.METHOD "SEEDS"``, image by image on the CPU); SLIC,
written here as a batched tensor program that also runs on a GPU, is the default.

Both return a label map (B, H, W) int64 whose ids lie in [0, K), K the same for the batch (the
batch of segment tokens is padded to K; an id without pixels becomes an empty token).
"""
import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rgb_to_lab", "slic", "seeds", "seeds_available", "compute_superpixels", "SUPERPIXEL_METHODS"]

SUPERPIXEL_METHODS = ("SLIC", "SEEDS")

# sRGB (D65) → XYZ, rows X, Y, Z; and the D65 white point
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(B, 3, H, W) sRGB in [0, 1] → (B, 3, H, W) CIE LAB (L in [0, 100], a/b about ±100)."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), linear) / _WHITE.to(rgb).view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], dim=1)


def _grid_shape(height: int, width: int, num_segments: int) -> Tuple[int, int]:
    """Rows and columns of square-ish seed cells giving about ``num_segments`` cells."""
    side = math.sqrt(height * width / max(num_segments, 1))
    return max(1, min(height, round(height / side))), max(1, min(width, round(width / side)))


@torch.no_grad()
def slic(lab: Tensor, num_segments: int, compactness: float = 10.0, iterations: int = 10) -> Tensor:
    """SLIC superpixels of a batch, all images at once.

    Seeds sit on a regular grid of about ``num_segments`` cells; every pixel may join only the
    centres of the 3×3 cells around its own cell (SLIC's 2S×2S search window, expressed on the
    seed grid: the candidates of one offset, for all pixels, are the shifted centre grid
    upsampled to the image). The distance
    is ‖Δlab‖² + (compactness / S)²·‖Δxy‖², S the seed spacing. No connectivity post-processing:
    a superpixel may come out in pieces, which a segment token does not mind.

    Args:
        lab: (B, 3, H, W) image in LAB (any colour space with values of LAB's scale works).
        num_segments: wanted number of superpixels K (the grid gives a nearby count).
        compactness: weight of the spatial distance (SLIC's m).
        iterations: assignment / update rounds.
    Returns:
        (B, H, W) int64 labels in [0, gh·gw); ids of seeds that lost all pixels are absent.
    """
    B, _, H, W = (int(n) for n in lab.shape)
    gh, gw = _grid_shape(H, W, num_segments)
    K = gh * gw
    cell_h, cell_w = H / gh, W / gw
    spacing = math.sqrt(cell_h * cell_w)
    device = lab.device
    lab = lab.float()

    ys = torch.arange(H, device=device, dtype=torch.float32)
    xs = torch.arange(W, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # features whose squared Euclidean distance is SLIC's distance
    scale = compactness / spacing
    pos = torch.stack([yy, xx]) * scale  # (2, H, W)
    feats = torch.cat([lab, pos[None].expand(B, -1, -1, -1)], dim=1).flatten(2)  # (B, 5, HW)

    # Every pixel's home cell, as nearest-neighbour upsampling of the seed grid sees it: the
    # candidates of offset (dy, dx) are then the shifted centre grid upsampled to the image,
    # one fast interpolation instead of a gather.
    home_y = F.interpolate(torch.arange(gh, device=device, dtype=torch.float32).view(1, 1, gh, 1),
                           size=(H, 1), mode="nearest").view(H).long()
    home_x = F.interpolate(torch.arange(gw, device=device, dtype=torch.float32).view(1, 1, 1, gw),
                           size=(1, W), mode="nearest").view(W).long()
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

    # initial centres: the pixel at the middle of every seed cell
    cy = ((torch.arange(gh, device=device) + 0.5) * cell_h).long().clamp_max(H - 1)
    cx = ((torch.arange(gw, device=device) + 0.5) * cell_w).long().clamp_max(W - 1)
    centre_pixels = (cy[:, None] * W + cx[None, :]).flatten()  # (K,)
    centres = feats[:, :, centre_pixels]  # (B, 5, K)
    ones = feats.new_ones(B, 1, H * W)
    # a candidate's id is its pixel's home seed id plus the offset's step dy·gw + dx; an offset
    # off the grid is never chosen (its centre is infinitely far), so no id needs clamping
    home = (home_y[:, None] * gw + home_x[None, :]).flatten()  # (HW,)

    def distances(grid: Tensor, dy: int, dx: int) -> Tensor:
        """(B, HW) SLIC distance of every pixel to the centre of its home cell's (dy, dx) neighbour."""
        shifted = grid[:, :, 1 + dy:1 + dy + gh, 1 + dx:1 + dx + gw]
        centre = F.interpolate(shifted, size=(H, W), mode="nearest").flatten(2)  # (B, 5, HW)
        return (feats - centre).square().sum(1)

    (dy0, dx0), *others = offsets
    for _ in range(iterations):
        grid = F.pad(centres.view(B, 5, gh, gw), (1, 1, 1, 1), value=float("inf"))
        # started from the first candidate, not from tensors made up front (an export would
        # store those as constants); the home seed (step 0) where it is off the grid, or NaN
        best = distances(grid, dy0, dx0)
        step = torch.where(best < float("inf"), dy0 * gw + dx0, 0)
        for dy, dx in others:
            dist = distances(grid, dy, dx)
            closer = dist < best  # strict: ties keep the earlier candidate, deterministic
            best = torch.where(closer, dist, best)
            step = torch.where(closer, dy * gw + dx, step)
        labels = home + step  # (B, HW)
        sums = feats.new_zeros(B, 5, K).scatter_add_(2, labels[:, None].expand(-1, 5, -1), feats)
        counts = feats.new_zeros(B, 1, K).scatter_add_(2, labels[:, None], ones)
        # a seed that lost all its pixels keeps its old centre
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return labels.view(B, H, W)


def seeds_available() -> bool:
    """Whether OpenCV has the contrib module ``ximgproc`` (SEEDS)."""
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "ximgproc")


def seeds(
    lab_uint8: np.ndarray, num_segments: int, levels: int = 1, prior: int = 2, bins: int = 5, iterations: int = 15
) -> np.ndarray:
    """SEEDS superpixels of one (H, W, 3) uint8 LAB image (OpenCV ``ximgproc``), (H, W) int32.

    CAST's settings are the defaults: 1 level, prior 2, 5 histogram bins, 15 iterations.
    """
    if not seeds_available():
        raise RuntimeError(
            "SEEDS superpixels need OpenCV's contrib module cv2.ximgproc, which opencv-python-headless "
            "lacks; install opencv-contrib-python-headless in place of opencv-python-headless (they "
            "conflict; scripts/install.sh does), or use MODEL.CAST.SUPERPIXEL.METHOD 'SLIC'"
        )
    import cv2

    H, W = lab_uint8.shape[:2]
    engine = cv2.ximgproc.createSuperpixelSEEDS(W, H, 3, num_segments, levels, prior, bins)
    engine.iterate(np.ascontiguousarray(lab_uint8), iterations)
    return engine.getLabels()


def _lab_to_opencv_uint8(lab: Tensor) -> Tensor:
    """LAB floats → OpenCV's 8-bit LAB encoding (L·255/100, a + 128, b + 128), (B, H, W, 3)."""
    scaled = torch.stack([lab[:, 0] * 255 / 100, lab[:, 1] + 128, lab[:, 2] + 128], dim=-1)
    return scaled.round().clamp(0, 255).to(torch.uint8)


def compute_superpixels(
    rgb: Tensor, method: str = "SLIC", num_segments: int = 196, compactness: float = 10.0, iterations: int = 10
) -> Tuple[Tensor, int]:
    """Superpixels of a batch of (B, 3, H, W) sRGB images in [0, 1].

    Returns (labels (B, H, W) int64 in [0, K), K). For SEEDS, each image's ids are made
    contiguous and K is the largest count of the batch.
    """
    method = method.upper()
    lab = rgb_to_lab(rgb.float().clamp(0, 1))
    if method == "SLIC":
        labels = slic(lab, num_segments, compactness, iterations)
        gh, gw = _grid_shape(int(rgb.shape[-2]), int(rgb.shape[-1]), num_segments)
        return labels, gh * gw
    if method == "SEEDS":
        images = _lab_to_opencv_uint8(lab).cpu().numpy()
        maps = []
        for image in images:  # OpenCV works image by image
            raw = torch.from_numpy(seeds(image, num_segments, iterations=max(iterations, 15)).astype(np.int64))
            maps.append(torch.unique(raw, return_inverse=True)[1])
        K = max(int(m.max()) + 1 for m in maps)
        return torch.stack(maps).to(rgb.device), K
    raise ValueError(f"Unknown superpixel method {method!r}; expected one of {SUPERPIXEL_METHODS}")

"""Integer id maps as PNG data URLs: how the hierarchy explorer pages carry their cluster maps.

A page must open from the file system with no server, so its maps travel inside the HTML. An
(H, W) map of ids in [0, 2^24) becomes an RGB PNG holding each id in 24 bits, high byte in red::

    id = R·65536 + G·256 + B

and then a ``data:image/png;base64,...`` URL. The browser decodes it with the image decoder it
already has (draw it on a canvas, read the pixels back: exact for an opaque PNG without a colour
profile, which is what is written here) and PNG's row filters do the compressing: a map of grid
cells is runs of one value, and whole rows repeat, which the "Sub" and "Up" filters turn into
zeros. :func:`decode_id_map` is the same decoding in Python, for the tests and for anyone who
wants the numbers back out of a page.
"""
import base64
import cv2
import numpy as np

__all__ = ["MAX_ID", "PNG_URL_PREFIX", "JPEG_URL_PREFIX", "encode_id_map", "decode_id_map", "encode_picture"]

MAX_ID = (1 << 24) - 1  # the largest id three bytes hold
PNG_URL_PREFIX = "data:image/png;base64,"
JPEG_URL_PREFIX = "data:image/jpeg;base64,"


def encode_id_map(ids: np.ndarray, name: str = "id map") -> str:
    """(H, W) integer ids in [0, 2^24) → PNG data URL (see the module docstring).

    Args:
        name: what the map is, for the error message when an id does not fit.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be an (H, W) integer array, got shape {ids.shape} dtype {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > MAX_ID):
        raise ValueError(
            f"{name} has ids in [{int(ids.min())}, {int(ids.max())}]; a page holds ids in [0, {MAX_ID}] "
            "(renumber them first, e.g. with np.unique(..., return_inverse=True))"
        )
    ids = ids.astype(np.uint32)
    # cv2 writes channels in BGR order: blue first, so that red holds the high byte
    bgr = np.stack([ids & 0xFF, (ids >> 8) & 0xFF, ids >> 16], axis=-1).astype(np.uint8)
    ok, png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {name} ({ids.shape}) as PNG")
    return PNG_URL_PREFIX + base64.b64encode(png.tobytes()).decode("ascii")


def decode_id_map(url: str) -> np.ndarray:
    """The (H, W) int64 ids of a data URL written by :func:`encode_id_map`."""
    if not url.startswith(PNG_URL_PREFIX):
        raise ValueError(f"expected a URL starting with {PNG_URL_PREFIX!r}, got {url[:40]!r}")
    png = np.frombuffer(base64.b64decode(url[len(PNG_URL_PREFIX) :]), dtype=np.uint8)
    bgr = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError("the data URL does not hold an RGB PNG")
    bgr = bgr.astype(np.int64)
    return (bgr[..., 2] << 16) | (bgr[..., 1] << 8) | bgr[..., 0]


def encode_picture(image: np.ndarray, quality: int = 85) -> str:
    """(H, W, 3) uint8 RGB picture (a photo, an overlay) → JPEG data URL.

    JPEG, not PNG: photos are most of a page's bytes, and a slightly lossy photo under exact
    cluster maps loses nothing the page is about.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"a picture must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} picture as JPEG")
    return JPEG_URL_PREFIX + base64.b64encode(jpeg.tobytes()).decode("ascii")


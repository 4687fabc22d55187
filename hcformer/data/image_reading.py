"""Reading dataset and demo images so that a bad file fails with its name and the reason.

detectron2's ``read_image`` lets a missing file, a truncated JPEG or a 16-bit PNG through as a
bare ``OSError``, a crash deep inside an augmentation, or a silently white image. Here:

- images: EXIF orientation applied; grayscale, palette, CMYK and RGBA become 3 channels (alpha
  is dropped); 16-bit images are scaled to 8 bits (65535 -> 255) instead of clipped, 32-bit
  ones with values outside 0..65535 are refused; more than ``max_pixels`` pixels
  (INPUT.MAX_IMAGE_PIXELS) is refused before the pixels are decoded;
- label PNGs: semantic maps must be single-channel, panoptic maps RGB (R + 256 G + 256² B);
- any failure is a ``BadSampleError`` naming the file: training may skip such samples
  (DATALOADER.SKIP_BAD_SAMPLES), evaluation and the demo never do.
"""
import os
import warnings
import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image, ImageOps

from .checks import BadSampleError, MissingSampleFileError

__all__ = [
    "BadSampleError",
    "IMAGE_FORMATS",
    "MissingSampleFileError",
    "check_image_format",
    "read_image_file",
    "read_label_file",
]

# INPUT.FORMAT: detectron2 reads any PIL mode, but the model is built for colour images (3 input
# channels, PIXEL_MEAN/STD of 3 values), and the colour augmentation, the demo and the exports
# know these two channel orders only
IMAGE_FORMATS = ("RGB", "BGR")

# Single-channel modes a semantic label PNG may have (8-, 16- and 32-bit class ids).
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _open(path: str, role: str, max_pixels: int) -> Image.Image:
    """The decoded PIL image of ``path``; header checks (size) before decoding the pixels."""
    if not os.path.exists(path):  # also a dangling symbolic link
        raise MissingSampleFileError(f"{role} not found: {path}")
    if os.path.isdir(path):
        raise BadSampleError(f"{role} {path} is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            # our own limit below is the one that matters, and it gives a better message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as e:
        raise BadSampleError(f"{role} {path} is too large for PIL ({e})") from None
    except PermissionError:
        raise BadSampleError(
            f"{role} {path} cannot be opened: permission denied (check the file's permissions "
            "and owner, and those of its folders)"
        ) from None
    except OSError as e:  # PIL's UnidentifiedImageError too, with no errno
        # the operating system refused the file (I/O error, a socket, ...): its bytes were never
        # seen, so do not call it corrupt
        if e.errno is not None:
            raise BadSampleError(f"{role} {path} cannot be opened: {e.strerror}") from None
        raise BadSampleError(
            f"{role} {path} cannot be read as an image: it is corrupt or not an image file ({e})"
        ) from None
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise BadSampleError(
            f"{role} {path} is {width} x {height} = {width * height} pixels, more than "
            f"INPUT.MAX_IMAGE_PIXELS = {max_pixels}; downscale it or raise that limit"
        )
    if width == 0 or height == 0:
        raise BadSampleError(f"{role} {path} is empty ({width} x {height})")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:  # PIL: "image file is truncated", ...
        raise BadSampleError(f"{role} {path} is truncated or corrupt ({e})") from None
    return image


def _to_8_bit(image: Image.Image, path: str, role: str) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (PIL's own conversion clips everything above 255).

    PIL opens 16-bit PNGs as 32-bit mode "I", so that mode is accepted when its values fit in 16
    bits. Values outside 0..65535 (a 32-bit TIFF, say) are refused: any scaling we chose (by
    the image's own range, say) would make the brightness differ from image to image.
    """
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    if low < 0 or high > 65535:
        raise BadSampleError(
            f"{role} {path} holds 32-bit pixel values ({low:.0f}..{high:.0f}, PIL mode "
            f"{image.mode}) outside the 16-bit range 0..65535; expected 8- or 16-bit pixels. "
            "Convert it to 8 bits with the scaling that suits its data"
        )
    return Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")


def check_image_format(image_format: str) -> None:
    """Raise ValueError unless INPUT.FORMAT ``image_format`` is one of :data:`IMAGE_FORMATS`."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"INPUT.FORMAT={image_format!r}: expected one of {list(IMAGE_FORMATS)} (the channel order "
            "of the 3-channel images the model, the colour augmentation and the pretrained backbones take)"
        )


def read_image_file(path: str, format: str = "RGB", max_pixels: int = 0, role: str = "image") -> np.ndarray:
    """H x W x 3 uint8 array of the image at ``path`` in ``format`` ("RGB" or "BGR"), upright.

    Args:
        max_pixels: refuse images with more pixels (0: no limit of ours).
        role: what the file is, for messages ("image", "demo input", ...).

    Raises:
        MissingSampleFileError, BadSampleError: naming ``path``.
    """
    image = _open(path, role, max_pixels)
    image = ImageOps.exif_transpose(image)  # the orientation a viewer shows
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _to_8_bit(image, path, role)
    elif image.mode == "F":
        raise BadSampleError(f"{role} {path} holds floating-point pixels (PIL mode F); expected 8 or 16 bits")
    array = convert_PIL_to_numpy(image, format)  # converts L / P / RGBA / CMYK to 3 channels
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadSampleError(f"{role} {path}: could not make 3 channels of PIL mode {image.mode}")
    return array


def read_label_file(path: str, kind: str, max_pixels: int = 0) -> np.ndarray:
    """A label PNG: ``kind`` "semantic" -> H x W class ids (uint8 kept, wider ids as float64,
    which detectron2's transforms resize nearest-neighbour too); "panoptic" -> H x W x 3 uint8
    RGB (segment id = R + 256 G + 256² B).

    Raises:
        MissingSampleFileError, BadSampleError: naming ``path``, e.g. for a wrong PNG mode.
    """
    role = f"{kind} label PNG"
    image = _open(path, role, max_pixels)
    if kind == "semantic":
        if image.mode not in _LABEL_MODES:
            raise BadSampleError(
                f"{role} {path} has PIL mode {image.mode}; expected one channel of class ids "
                f"(modes {', '.join(_LABEL_MODES)}). Is it a colour visualisation instead of labels?"
            )
        labels = np.asarray(image)
        return labels if labels.dtype == np.uint8 else labels.astype(np.float64)
    if kind == "panoptic":
        if image.mode != "RGB":
            raise BadSampleError(
                f"{role} {path} has PIL mode {image.mode}; expected RGB (COCO panoptic format: "
                "segment id = R + 256 G + 256^2 B)"
            )
        return np.asarray(image)
    raise ValueError(f"kind must be 'semantic' or 'panoptic', got {kind!r}")

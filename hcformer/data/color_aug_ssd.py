"""SSD-style photometric distortion (``cfg.INPUT.COLOR_AUG_SSD``) as a detectron2 augmentation.

Random brightness, contrast, saturation and hue changes, each applied with probability 1/2, with
contrast either before or after the HSV changes (as in the SSD paper's data augmentation and
MaskFormer's semantic training). The random draw happens in :class:`ColorAugSSD`; the returned
:class:`PhotometricDistortion` transform is deterministic and leaves labels untouched.
"""

from typing import Optional

import cv2
import numpy as np
from detectron2.data import transforms as T

from .image_reading import check_image_format

__all__ = ["ColorAugSSD", "PhotometricDistortion"]


class PhotometricDistortion(T.ColorTransform):
    """Change brightness (additive), contrast (multiplicative), saturation and hue of an image.

    ``None`` for a parameter means "leave that property unchanged". A ``ColorTransform``:
    coordinates and labels pass unchanged, the inverse is a no-op.
    """

    def __init__(
        self,
        image_format: str,
        brightness: Optional[float],
        contrast: Optional[float],
        saturation: Optional[float],
        hue: Optional[float],
        contrast_first: bool,
    ):
        # not ColorTransform's __init__: the operation is ``apply_image``, not a callable argument
        check_image_format(image_format)
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """img: H x W x 3, uint8 or float in [0, 255]; returns the same dtype."""
        dtype = img.dtype
        img = img.astype(np.float32)
        if self.brightness is not None:
            img = np.clip(img + self.brightness, 0, 255)
        if self.contrast is not None and self.contrast_first:
            img = np.clip(img * self.contrast, 0, 255)
        if self.saturation is not None or self.hue is not None:
            to_hsv, from_hsv = (
                (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
                if self.image_format == "RGB"
                else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
            )
            # float32 input in [0, 1]: OpenCV gives H in [0, 360), S and V in [0, 1]
            hsv = cv2.cvtColor(img / 255.0, to_hsv)
            if self.saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 1)
            if self.hue is not None:
                hsv[..., 0] = (hsv[..., 0] + self.hue) % 360
            img = np.clip(cv2.cvtColor(hsv, from_hsv) * 255.0, 0, 255)
        if self.contrast is not None and not self.contrast_first:
            img = np.clip(img * self.contrast, 0, 255)
        return np.round(img).astype(dtype) if dtype == np.uint8 else img.astype(dtype)


class ColorAugSSD(T.Augmentation):
    """Sample a :class:`PhotometricDistortion` with SSD's ranges.

    Args:
        image_format: "RGB" or "BGR" (``cfg.INPUT.FORMAT``).
        brightness_delta: brightness shift drawn from [-delta, delta] (0-255 scale).
        contrast_range, saturation_range: multiplicative factors drawn from these ranges.
        hue_delta: hue shift drawn from [-delta, delta], in OpenCV's 8-bit units (1 unit = 2
            degrees), as in the original SSD / MaskFormer code.
    """

    def __init__(
        self,
        image_format: str = "RGB",
        brightness_delta: float = 32,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta: float = 18,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        def maybe(low, high):
            return float(np.random.uniform(low, high)) if np.random.rand() < 0.5 else None

        hue = maybe(-self.hue_delta, self.hue_delta)
        return PhotometricDistortion(
            self.image_format,
            brightness=maybe(-self.brightness_delta, self.brightness_delta),
            contrast=maybe(*self.contrast_range),
            saturation=maybe(*self.saturation_range),
            hue=None if hue is None else 2 * hue,  # 8-bit OpenCV hue units -> degrees
            contrast_first=bool(np.random.rand() < 0.5),
        )

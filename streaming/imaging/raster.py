"""PNG and JPEG through Pillow, size-checked before ``load()``; and scaling samples to [0, 1]."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from streaming.imaging.limits import raster_too_large
from streaming.imaging.types import PNG, DecodedImage, ImageLimits, ImageRejected
from streaming.contracts.reasons import Reason

logger = logging.getLogger(__name__)


def scaled_unit(samples: np.ndarray, bits: int) -> np.ndarray:
    bits = min(max(bits, 1), samples.dtype.itemsize * 8)
    return affine_to_unit(samples, 1.0 / (2 ** bits - 1), 0.0)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


_GRAY_MODES = ("1", "L", "LA", "La")


def decode_raster(data: bytes, kind: str, limits: ImageLimits) -> DecodedImage:
    format_name = "PNG" if kind == PNG else "JPEG"
    try:
        image = Image.open(io.BytesIO(data), formats=[format_name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise raster_too_large(format_name, limits) from None
    except Exception as error:  # UnidentifiedImageError, OSError, SyntaxError ...
        logger.debug("raster header unreadable: %s", type(error).__name__)
        raise ImageRejected(Reason.NOT_AN_IMAGE,
                            f"the {format_name} header cannot be parsed "
                            f"({type(error).__name__})") from None
    with image:
        width, height = image.size
        if width * height > limits.max_frame_pixels:
            raise raster_too_large(format_name, limits, width, height)
        try:
            image.load()
            pixels, photometric = _raster_unit(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise raster_too_large(format_name, limits, width, height) from None
        except MemoryError:
            raise
        except Exception as error:
            logger.debug("raster data undecodable: %s", type(error).__name__)
            raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                                f"the {format_name} image data cannot be decoded "
                                f"({type(error).__name__}); the file may be truncated "
                                "or corrupt") from None
    return DecodedImage(pixels=pixels, photometric_interpretation=photometric)


def _raster_unit(image: Image.Image) -> tuple[np.ndarray, str]:
    """Pillow's pixels as float32 in [0, 1], and MONOCHROME2 or RGB."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return scaled_unit(np.asarray(image), 16), "MONOCHROME2"
    if image.mode in ("I", "F"):
        return _min_max_unit(np.asarray(image)), "MONOCHROME2"
    if image.mode in _GRAY_MODES:
        return scaled_unit(np.asarray(image.convert("L")), 8), "MONOCHROME2"
    # RGB, RGBA (alpha dropped), P, CMYK, YCbCr ...
    return scaled_unit(np.asarray(image.convert("RGB")), 8), "RGB"


def _min_max_unit(values: np.ndarray) -> np.ndarray:
    """Min-max over the finite values; NaN and infinities become 0."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(values[finite].min()), float(values[finite].max())
    return range_to_unit(np.where(finite, values, low), low, high)


def affine_to_unit(frame: np.ndarray, scale: float, offset: float) -> np.ndarray:
    unit = frame.astype(np.float32)
    unit *= np.float32(scale)
    unit += np.float32(offset)
    return np.clip(unit, 0.0, 1.0, out=unit)


def range_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(values - low) / (high - low) in float32, clipped; an empty range gives zeros."""
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    scale = 1.0 / (high - low)
    return affine_to_unit(values, scale, -low * scale)

"""From image bytes to display-ready pixels: DICOM, PNG and JPEG.

Inputs: the bytes of one file (``decode_image_bytes``) or an event's URI read
through an ``AccessPolicy`` (``load_image``), the event's content type, and
``ImageLimits``. Output: a ``DecodedImage`` (float32 pixels in [0, 1], larger is
brighter; (H, W) grayscale or (H, W, 3) RGB; plus Modality, Body Part Examined and
Photometric Interpretation), or ``ImageRejected`` with a dead-letter reason.

What a file is comes from its content, not from the declared content type:
"DICM" at offset 128, a DICOM data set without preamble that parses and holds
Pixel Data, the PNG signature, or the JPEG SOI marker. Anything else is
``not_an_image``.

DICOM display pipeline, in the order of PS3.4 N.2:
  modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept), then VOI (VOI
  LUT Sequence, or the first Window Center/Width), scaled to [0, 1] by the output
  range the VOI transform defines (pydicom's [y_min, y_max]); without a VOI the
  frame is min-max normalized (a constant frame becomes zeros). MONOCHROME1 is
  inverted. For Enhanced multi-frame objects the frame's functional groups
  (per-frame, then shared) supply rescale and window. The common case (rescale
  plus a LINEAR window, or min-max) is one fused float32 affine transform; the
  rest goes through pydicom's own functions. Presentation LUTs are not applied.
  Color: RGB stays RGB, YBR_* arrive as RGB from pydicom's decoders (it converts
  YBR_FULL/_422, the JPEG 2000 decoder undoes ICT/RCT), PALETTE COLOR goes through
  its lookup table; samples are scaled by Bits Stored (by the LUT depth for palettes).

Multi-frame policy: only the central frame (index ``frames // 2``) is decoded and
scored; it is the frame most likely to show the anatomy of interest in a cine or
volume, and decoding one frame keeps the cost of a 1000-frame object that of one
image. ``frame_index`` and ``frame_count`` say which frame it was.

Safety: header sizes are checked against ``ImageLimits`` before any pixel is
decoded, compressed frames are checked to be no larger than the header says,
deflated data sets are inflated under a bound, and Pillow's size is checked before
``load()``. Messages are fixed templates naming the rule and safe facts (sizes,
transfer syntax name, exception class); header values and library messages,
which can echo them, never appear in messages or logs.
"""

from __future__ import annotations

import hashlib
import logging

from streaming.imaging.access import AccessPolicy, open_image_bytes
from streaming.imaging.dicom import decode_dicom
from streaming.imaging.raster import decode_raster
# DICOM, PNG and JPEG are re-exported: callers name content types from here.
from streaming.imaging.types import (DICOM, JPEG, PNG, DecodedImage, ImageLimits,  # noqa: F401
                                     ImageRejected)
from streaming.contracts.reasons import Reason

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"


def load_image(uri: str, content_type: str, *, policy: AccessPolicy, limits: ImageLimits,
               expected_sha256: str | None = None) -> DecodedImage:
    """Read ``uri`` under ``policy``, verify its digest if one is given, and decode it."""
    data = open_image_bytes(uri, policy, limits.max_file_bytes)
    if expected_sha256 is not None:
        _check_sha256(data, expected_sha256)
    return decode_image_bytes(data, content_type, limits)


def decode_image_bytes(data: bytes, content_type: str, limits: ImageLimits) -> DecodedImage:
    """Decode one file's bytes to a ``DecodedImage``, or raise ``ImageRejected``."""
    if len(data) > limits.max_file_bytes:
        raise ImageRejected(Reason.FILE_TOO_LARGE,
                            f"the file is {len(data)} bytes, over the limit of "
                            f"{limits.max_file_bytes}; raise max_file_bytes if such "
                            "files are expected")
    kind = _sniff(data)
    if kind != content_type and content_type in (DICOM, PNG, JPEG):
        logger.debug("declared %s but the content is %s; decoding by content",
                     content_type, kind)
    try:
        if kind == DICOM:
            return decode_dicom(data, limits)
        return decode_raster(data, kind, limits)
    except MemoryError:
        raise ImageRejected(Reason.OVER_SIZE_LIMITS,
                            "the worker ran out of memory decoding this image; lower "
                            "the image limits or give workers more memory") from None


def _check_sha256(data: bytes, expected_sha256: str) -> None:
    if hashlib.sha256(data).hexdigest() != expected_sha256.strip().lower():
        raise ImageRejected(Reason.CHECKSUM_MISMATCH,
                            "the file's sha256 differs from the event's; the file "
                            "changed after the event was sent or the event is wrong: "
                            "resend it once the file is final")


def _sniff(data: bytes) -> str:
    if data[128:132] == b"DICM" or _looks_like_bare_dataset(data):
        return DICOM
    if data.startswith(_PNG_SIGNATURE):
        return PNG
    if data.startswith(_JPEG_SOI):
        return JPEG
    raise ImageRejected(Reason.NOT_AN_IMAGE,
                        "the content is not DICOM, PNG or JPEG (judged by its first "
                        "bytes, not by the declared content type)")


def _looks_like_bare_dataset(data: bytes) -> bool:
    """A preamble-less data set starts with group 0002 or 0008 (little or big endian)."""
    if len(data) < 8 or data.startswith((_PNG_SIGNATURE, _JPEG_SOI)):
        return False
    return (int.from_bytes(data[:2], "little") in (0x0002, 0x0008)
            or int.from_bytes(data[:2], "big") == 0x0008)

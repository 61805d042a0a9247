"""Size and bomb checks, made before any pixel is decoded: file, inflated data set, rows x
columns x frames x samples, and compressed frames that claim more pixels than their header.

Messages are fixed templates with safe facts only (sizes, syntax names), never header values.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import zlib

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
# The public read_file_meta_info() takes only a path; the bytes are in memory.
from pydicom.filereader import _read_file_meta_info, read_preamble

from streaming.imaging.frames import undecodable
from streaming.imaging.types import ImageLimits, ImageRejected
from streaming.contracts.reasons import Reason

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")

PALETTE = "PALETTE COLOR"

logger = logging.getLogger(__name__)





_INFLATE_CHUNK = 1 << 20


# Every defined term of PS3.3 C.7.6.3.1.2, so that a message names only those.
_PHOTOMETRIC_TERMS = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB",
                      "CMYK", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
                      "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB")


_SUPPORTED_BITS = (1, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    frames: int
    photometric: str
    samples: int = 1


def check_deflated_size(data: bytes, max_bytes: int) -> None:
    """Refuse a deflated data set that inflates past max_bytes (a zip bomb).

    pydicom inflates the whole data set without a bound, so it is measured here
    first, in bounded chunks that are thrown away.
    """
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception as error:
        raise not_dicom("the DICOM file meta information cannot be parsed", error) from None
    if meta.get("TransferSyntaxUID") != dicom_uid.DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[stream.tell():], 0
    try:
        while True:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            total += len(chunk)
            if total > max_bytes:
                raise ImageRejected(Reason.OVER_SIZE_LIMITS,
                                    f"the deflated data set inflates past {max_bytes} "
                                    "bytes (max_file_bytes)")
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                return
    except zlib.error as error:
        raise not_dicom("the deflated data set cannot be inflated", error) from None


def data_set_bytes(data: bytes, max_bytes: int) -> bytes:
    """The data set after the preamble and file meta information, inflated if deflated."""
    stream = io.BytesIO(data)
    read_preamble(stream, True)
    meta = _read_file_meta_info(stream)
    body = data[stream.tell():]
    if meta.get("TransferSyntaxUID") == dicom_uid.DeflatedExplicitVRLittleEndian:
        # Bounded like check_deflated_size: a cut stream simply inflates to less.
        body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, max_bytes)
    return body


def checked_geometry(dataset: Dataset, limits: ImageLimits) -> _Geometry:
    """The image's size from the header, refused if insane or over the limits."""
    rows = _header_int(dataset, "Rows")
    columns = _header_int(dataset, "Columns")
    samples = _header_int(dataset, "SamplesPerPixel")
    bits = _header_int(dataset, "BitsAllocated")
    # pydicom reads a missing or zero Number of Frames as one frame.
    frames = _header_int(dataset, "NumberOfFrames", default=1) or 1
    photometric = _photometric(dataset)
    if min(rows, columns, frames) < 1 or bits not in _SUPPORTED_BITS:
        raise _bad_pixel_description("Rows, Columns, Number of Frames or Bits Allocated")
    if samples != (1 if photometric in GRAYSCALE + (PALETTE,) else 3):
        raise _bad_pixel_description("Samples per Pixel")
    _check_limits(rows, columns, frames, samples, limits)
    return _Geometry(rows, columns, frames, photometric, samples)


def _check_limits(rows: int, columns: int, frames: int, samples: int,
                  limits: ImageLimits) -> None:
    if rows * columns > limits.max_frame_pixels:
        raise ImageRejected(Reason.OVER_SIZE_LIMITS,
                            f"the frame is {rows} x {columns} pixels, over the limit "
                            f"of {limits.max_frame_pixels} (max_frame_pixels)")
    if frames > limits.max_frames:
        raise ImageRejected(Reason.OVER_SIZE_LIMITS,
                            f"the object has {frames} frames, over the limit of "
                            f"{limits.max_frames} (max_frames)")
    if rows * columns * frames * samples > limits.max_total_samples:
        raise ImageRejected(Reason.OVER_SIZE_LIMITS,
                            f"{rows} x {columns} pixels x {frames} frames x {samples} "
                            f"samples is over the limit of {limits.max_total_samples} "
                            "(max_total_samples)")


def _header_int(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = dataset.get(keyword)
    except Exception:  # a malformed value fails on conversion
        raise _bad_pixel_description(keyword) from None
    if value is None or value == "":
        if default is None:
            raise _bad_pixel_description(keyword)
        return default
    if not isinstance(value, int):  # IS values that are not numbers stay strings
        raise _bad_pixel_description(keyword)
    return int(value)


def _photometric(dataset: Dataset) -> str:
    try:
        value = dataset.get("PhotometricInterpretation")
    except Exception:
        value = None
    text = value.strip().upper() if isinstance(value, str) else ""
    if text not in GRAYSCALE + COLOR + (PALETTE,):
        shown = text if text in _PHOTOMETRIC_TERMS else "missing or unrecognised"
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"Photometric Interpretation {shown} is not supported "
                            "(supported: MONOCHROME1/2, RGB, YBR_*, PALETTE COLOR)")
    return text


def _bad_pixel_description(what: str) -> ImageRejected:
    return ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                         f"the image pixel description (group 0028) has a missing or "
                         f"invalid {what}; the pixel data cannot be interpreted")


# What a DICOM frame's codestream may declare: no decoder we ship needs more, and a
# codestream declaring thousands of components or 38-bit samples is a bomb, not an image.
MAX_CODESTREAM_COMPONENTS = 4
MAX_CODESTREAM_PRECISION = 16


@dataclasses.dataclass(frozen=True)
class _CodestreamHeader:
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample (the largest over the components)


def check_compressed_frame(dataset: Dataset, syntax: dicom_uid.UID, geometry: _Geometry,
                           index: int) -> None:
    """Refuse a compressed frame whose own header claims more than the DICOM header.

    Decoders allocate by the codestream's size, component count and precision, not by
    Rows x Columns x Samples per Pixel, so an innocent-looking header could otherwise
    carry a decompression bomb.
    """
    try:
        header = _codestream_header(dataset.PixelData, index, geometry.frames)
    except Exception as error:
        raise undecodable(syntax, error) from None
    if header is None:
        return
    if header.rows * header.columns > geometry.rows * geometry.columns:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"the compressed frame claims {header.rows} x {header.columns} "
                            f"pixels but the header says {geometry.rows} x {geometry.columns}; "
                            "refusing to decode it")
    if not 1 <= header.components <= min(MAX_CODESTREAM_COMPONENTS, max(geometry.samples, 1)):
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"the compressed frame declares {header.components} components "
                            f"but the header says {geometry.samples} samples per pixel; "
                            "refusing to decode it")
    if not 1 <= header.precision <= MAX_CODESTREAM_PRECISION:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"the compressed frame declares {header.precision}-bit samples, "
                            f"more than {MAX_CODESTREAM_PRECISION}; refusing to decode it")


_ITEM_TAG = b"\xfe\xff\x00\xe0"
_FRAME_HEAD_BYTES = 4096
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _codestream_header(pixel_data: bytes, index: int, frames: int) -> _CodestreamHeader | None:
    head = _frame_head(pixel_data, index, frames)
    if head.startswith(_JP2_SIGNATURE):
        # A JP2 file, not a bare codestream: its header boxes (colour, ICC, XML) may push
        # the codestream and its SIZ marker far past the first few KiB.
        head = _jp2_codestream(get_frame(pixel_data, index, number_of_frames=frames))
    return _parse_codestream_header(head)


def _frame_head(pixel_data: bytes, index: int, frames: int) -> bytes:
    """The first bytes of one encapsulated frame, where its codestream header is."""
    if index == 0 and pixel_data[:4] == _ITEM_TAG:
        # The first fragment after the Basic Offset Table starts frame 0: no need
        # to copy a whole frame just to read its header.
        start = 8 + int.from_bytes(pixel_data[4:8], "little")
        if pixel_data[start:start + 4] == _ITEM_TAG:
            return pixel_data[start + 8:start + 8 + _FRAME_HEAD_BYTES]
    return get_frame(pixel_data, index, number_of_frames=frames)[:_FRAME_HEAD_BYTES]


def _jp2_codestream(frame: bytes) -> bytes:
    """The head of the contiguous codestream box ('jp2c') of a JP2 file (ISO 15444-1 I.4)."""
    position = 0
    while position + 8 <= len(frame):
        length = int.from_bytes(frame[position:position + 4], "big")
        box_type = frame[position + 4:position + 8]
        header = 8
        if length == 1:  # the length follows as 64 bits
            length = int.from_bytes(frame[position + 8:position + 16], "big")
            header = 16
        elif length == 0:  # the last box runs to the end
            length = len(frame) - position
        if box_type == b"jp2c":
            start = position + header
            return frame[start:start + _FRAME_HEAD_BYTES]
        if length < header:
            raise ValueError("a JP2 box shorter than its own header")
        position += length
    raise ValueError("a JP2 file without a codestream box")


def _parse_codestream_header(frame: bytes) -> _CodestreamHeader | None:
    """Size, components and precision from a JPEG / JPEG-LS frame header or a JPEG 2000 SIZ."""
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_header(frame)
    siz = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    if siz < 0 or len(frame) < siz + 42:
        return None
    width, height, x_offset, y_offset = np.frombuffer(frame, ">u4", 4, siz + 8)
    components = int.from_bytes(frame[siz + 40:siz + 42], "big")
    # Ssiz per component: bit depth - 1 in the low 7 bits (the high bit means signed).
    depths = frame[siz + 42:siz + 42 + 3 * min(components, MAX_CODESTREAM_COMPONENTS):3]
    precision = max(((depth & 0x7F) + 1 for depth in depths), default=0)
    return _CodestreamHeader(int(height) - int(y_offset), int(width) - int(x_offset),
                             components, precision)


def _jpeg_header(frame: bytes) -> _CodestreamHeader | None:
    # Start-of-frame markers: the JPEG processes (C0-CF less DHT, JPG, DAC) and JPEG-LS (F7).
    start_of_frame = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
    position = 2
    while position + 10 <= len(frame) and frame[position] == 0xFF:
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in start_of_frame:
            precision = frame[position + 4]
            height = int.from_bytes(frame[position + 5:position + 7], "big")
            width = int.from_bytes(frame[position + 7:position + 9], "big")
            return _CodestreamHeader(height, width, frame[position + 9], precision)
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        position += 2 + int.from_bytes(frame[position + 2:position + 4], "big")
    return None


def raster_too_large(format_name: str, limits: ImageLimits, width: int | None = None,
                      height: int | None = None) -> ImageRejected:
    size = f" is {width} x {height} pixels," if width is not None else ""
    return ImageRejected(Reason.OVER_SIZE_LIMITS,
                         f"the {format_name} image{size} over the limit of "
                         f"{limits.max_frame_pixels} pixels (max_frame_pixels) or "
                         "Pillow's decompression-bomb limit")


def not_dicom(what: str, error: Exception) -> ImageRejected:
    logger.debug("%s: %s", what, type(error).__name__)
    return ImageRejected(Reason.NOT_AN_IMAGE, f"{what} ({type(error).__name__}); the "
                         "file is not DICOM or is truncated or corrupt")

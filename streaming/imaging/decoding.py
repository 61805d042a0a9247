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

import dataclasses
import hashlib
import io
import logging
import math
import re
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as dicom_uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
# The public read_file_meta_info() takes only a path; the bytes are in memory.
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi_lut,
                            as_pixel_options, get_decoder)

from streaming.imaging.access import AccessPolicy, open_image_bytes
from streaming.imaging.types import DecodedImage, ImageLimits, ImageRejected
from streaming.reasons import Reason

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
PNG = "image/png"
JPEG = "image/jpeg"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_INFLATE_CHUNK = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA_TAG = 0x7FE00010
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Every defined term of PS3.3 C.7.6.3.1.2, so that a message names only those.
_PHOTOMETRIC_TERMS = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB",
                      "CMYK", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
                      "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_PALETTE = "PALETTE COLOR"
_SUPPORTED_BITS = (1, 8, 16, 32)
# A DICOM Code String as the finding schema accepts it; anything else is dropped.
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
_FUNCTIONAL_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_DISPLAY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
                     "VOILUTFunction", "ModalityLUTSequence", "VOILUTSequence")


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
            return _decode_dicom(data, limits)
        return _decode_raster(data, kind, limits)
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


# --- What the bytes are -------------------------------------------------------------

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


# --- DICOM --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    frames: int
    photometric: str


def _decode_dicom(data: bytes, limits: ImageLimits) -> DecodedImage:
    dataset = _read_dataset(data, limits)
    _require_pixel_data(dataset, data, limits)
    geometry = _checked_geometry(dataset, limits)
    index = geometry.frames // 2
    syntax = _transfer_syntax(dataset)
    if syntax.is_encapsulated:
        _check_compressed_frame(dataset, syntax, geometry, index)
    frame, decoded = _decode_frame(dataset, syntax, index)
    return DecodedImage(
        pixels=_display_pixels(frame, decoded, dataset, index),
        photometric_interpretation=geometry.photometric,
        modality=_code_string(dataset, "Modality"),
        body_part_examined=_code_string(dataset, "BodyPartExamined"),
        frame_index=index,
        frame_count=geometry.frames,
    )


def _read_dataset(data: bytes, limits: ImageLimits) -> Dataset:
    has_preamble = data[128:132] == b"DICM"
    if has_preamble:
        _check_deflated_size(data, limits.max_file_bytes)
    try:
        # The data is in memory already: nothing is deferred, nothing re-opened.
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except MemoryError:
        raise
    except Exception as error:  # pydicom raises many types for malformed input.
        raise _not_dicom("the DICOM header cannot be parsed", error) from None
    if not has_preamble and "PixelData" not in dataset:
        # Without the DICM prefix only a data set that clearly is an image counts.
        raise ImageRejected(Reason.NOT_AN_IMAGE,
                            "the content has no DICOM prefix and does not parse as a "
                            "DICOM image")
    return dataset


def _not_dicom(what: str, error: Exception) -> ImageRejected:
    logger.debug("%s: %s", what, type(error).__name__)
    return ImageRejected(Reason.NOT_AN_IMAGE, f"{what} ({type(error).__name__}); the "
                         "file is not DICOM or is truncated or corrupt")


def _check_deflated_size(data: bytes, max_bytes: int) -> None:
    """Refuse a deflated data set that inflates past max_bytes (a zip bomb).

    pydicom inflates the whole data set without a bound, so it is measured here
    first, in bounded chunks that are thrown away.
    """
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception as error:
        raise _not_dicom("the DICOM file meta information cannot be parsed", error) from None
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
        raise _not_dicom("the deflated data set cannot be inflated", error) from None


def _require_pixel_data(dataset: Dataset, data: bytes, limits: ImageLimits) -> None:
    if "PixelData" in dataset:
        return
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise ImageRejected(Reason.NO_PIXEL_DATA,
                            "the DICOM object has Float Pixel Data (a parametric map); "
                            "only integer Pixel Data (7FE0,0010) is scored")
    # pydicom drops every element when the data ends inside an undefined-length
    # one, such as compressed pixel data; the header alone tells which case it was.
    header = dataset if len(dataset) else _header_only(data)
    if header is None or not len(header) or _header_is_cut(data, header, limits):
        raise ImageRejected(Reason.NOT_AN_IMAGE,
                            "the DICOM file is truncated: its header is empty or ends "
                            "in the middle of an element")
    if "Rows" in header or "Columns" in header:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            "the header describes an image but its Pixel Data "
                            "(7FE0,0010) is missing or cut short: the file is "
                            "probably truncated")
    raise ImageRejected(Reason.NO_PIXEL_DATA,
                        "the DICOM object has no Pixel Data (7FE0,0010), e.g. a "
                        "structured report, waveform or presentation state: nothing "
                        "to score")


def _header_only(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                               force=data[128:132] != b"DICM")
    except Exception:
        return None


def _header_is_cut(data: bytes, header: Dataset, limits: ImageLimits) -> bool:
    """True when the data set's bytes end inside an element before Pixel Data.

    pydicom stops quietly at the end of the data and converts some elements as it
    reads (Specific Character Set, empty values, sequences), after which they no
    longer say whether they were complete; so the raw elements are walked again.
    A cut exactly between two elements leaves a well-formed object: undetectable.
    """
    try:
        body = _data_set_bytes(data, limits.max_file_bytes)
    except Exception:  # the meta information itself is cut or corrupt
        return True
    implicit, little = header.original_encoding
    stream = io.BytesIO(body)
    reached_pixel_data = []

    def at_pixel_data(tag, _vr, _length) -> bool:
        if tag == _PIXEL_DATA_TAG:
            reached_pixel_data.append(True)
        return bool(reached_pixel_data)

    end = 0
    try:
        for element in data_element_generator(stream, bool(implicit), bool(little),
                                              stop_when=at_pixel_data, defer_size=None):
            length = getattr(element, "length", _UNDEFINED_LENGTH)
            if isinstance(element, RawDataElement) and length != _UNDEFINED_LENGTH:
                if len(element.value or b"") < length:
                    return True
                end = element.value_tell + length
            else:  # a sequence pydicom parsed to its delimiter
                end = stream.tell()
    except Exception:  # EOFError inside a sequence, or bytes that are not elements
        return True
    return not reached_pixel_data and end < len(body)


def _data_set_bytes(data: bytes, max_bytes: int) -> bytes:
    """The data set after the preamble and file meta information, inflated if deflated."""
    stream = io.BytesIO(data)
    read_preamble(stream, True)
    meta = _read_file_meta_info(stream)
    body = data[stream.tell():]
    if meta.get("TransferSyntaxUID") == dicom_uid.DeflatedExplicitVRLittleEndian:
        # Bounded like _check_deflated_size: a cut stream simply inflates to less.
        body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, max_bytes)
    return body


def _checked_geometry(dataset: Dataset, limits: ImageLimits) -> _Geometry:
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
    if samples != (1 if photometric in _GRAYSCALE + (_PALETTE,) else 3):
        raise _bad_pixel_description("Samples per Pixel")
    _check_limits(rows, columns, frames, samples, limits)
    return _Geometry(rows, columns, frames, photometric)


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
    if text not in _GRAYSCALE + _COLOR + (_PALETTE,):
        shown = text if text in _PHOTOMETRIC_TERMS else "missing or unrecognised"
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"Photometric Interpretation {shown} is not supported "
                            "(supported: MONOCHROME1/2, RGB, YBR_*, PALETTE COLOR)")
    return text


def _bad_pixel_description(what: str) -> ImageRejected:
    return ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                         f"the image pixel description (group 0028) has a missing or "
                         f"invalid {what}; the pixel data cannot be interpreted")


def _transfer_syntax(dataset: Dataset) -> dicom_uid.UID:
    """The data set's transfer syntax; for files without one, the encoding it was read in."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        syntax = dicom_uid.UID(syntax)
        if not syntax.is_transfer_syntax:
            raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                                "the file's transfer syntax (0002,0010) is not a "
                                "registered transfer syntax")
        return syntax
    if dataset["PixelData"].is_undefined_length:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            "the pixel data is compressed but the file names no "
                            "transfer syntax (0002,0010)")
    implicit, little = dataset.original_encoding
    syntax = (dicom_uid.ImplicitVRLittleEndian if implicit else
              dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian)
    if meta is None:
        dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    return syntax


def _syntax_name(syntax: dicom_uid.UID) -> str:
    """A registered syntax's name; any other UID is not repeated (it is file content)."""
    return syntax.name if syntax.is_transfer_syntax else "an unregistered transfer syntax"


def _check_compressed_frame(dataset: Dataset, syntax: dicom_uid.UID, geometry: _Geometry,
                            index: int) -> None:
    """Refuse a compressed frame whose own header claims more pixels than the DICOM header.

    Decoders allocate by the codestream's size, not by Rows x Columns, so an
    innocent-looking header could otherwise carry a decompression bomb.
    """
    try:
        frame = _frame_head(dataset.PixelData, index, geometry.frames)
    except Exception as error:
        raise _undecodable(syntax, error) from None
    size = _codestream_size(frame)
    if size is not None and size[0] * size[1] > geometry.rows * geometry.columns:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"the compressed frame claims {size[0]} x {size[1]} pixels "
                            f"but the header says {geometry.rows} x {geometry.columns}; "
                            "refusing to decode it")


_ITEM_TAG = b"\xfe\xff\x00\xe0"
_FRAME_HEAD_BYTES = 4096


def _frame_head(pixel_data: bytes, index: int, frames: int) -> bytes:
    """The first bytes of one encapsulated frame, where its codestream header is."""
    if index == 0 and pixel_data[:4] == _ITEM_TAG:
        # The first fragment after the Basic Offset Table starts frame 0: no need
        # to copy a whole frame just to read its header.
        start = 8 + int.from_bytes(pixel_data[4:8], "little")
        if pixel_data[start:start + 4] == _ITEM_TAG:
            return pixel_data[start + 8:start + 8 + _FRAME_HEAD_BYTES]
    return get_frame(pixel_data, index, number_of_frames=frames)[:_FRAME_HEAD_BYTES]


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG / JPEG-LS frame header or a JPEG 2000 SIZ marker."""
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_size(frame)
    siz = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    if siz >= 0 and len(frame) >= siz + 24:
        width, height, x_offset, y_offset = np.frombuffer(frame, ">u4", 4, siz + 8)
        return int(height) - int(y_offset), int(width) - int(x_offset)
    return None


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    # Start-of-frame markers: the JPEG processes (C0-CF less DHT, JPG, DAC) and JPEG-LS (F7).
    start_of_frame = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
    position = 2
    while position + 9 <= len(frame) and frame[position] == 0xFF:
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in start_of_frame:
            height = int.from_bytes(frame[position + 5:position + 7], "big")
            width = int.from_bytes(frame[position + 7:position + 9], "big")
            return height, width
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        position += 2 + int.from_bytes(frame[position + 2:position + 4], "big")
    return None


def _undecodable(syntax: dicom_uid.UID, error: Exception) -> ImageRejected:
    logger.debug("pixel data not decodable: %s", type(error).__name__)
    return ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                         f"the {_syntax_name(syntax)} pixel data cannot be decoded "
                         f"({type(error).__name__}); the file may be truncated or corrupt")


def _decode_frame(dataset: Dataset, syntax: dicom_uid.UID,
                  index: int) -> tuple[np.ndarray, dict]:
    """One frame as stored (YBR already RGB) and pydicom's description of it."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"{_syntax_name(syntax)} is not a supported transfer "
                            "syntax") from None
    if not decoder.is_available:
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"no decoder for {_syntax_name(syntax)} is installed; "
                            "install pylibjpeg with pylibjpeg-libjpeg, -openjpeg and -rle")
    try:
        return decoder.as_array(dataset, index=index, validate=True, raw=False,
                                **as_pixel_options(dataset))
    except (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:
        # Decoders and plugins raise many types; the Rust ones (pylibjpeg-rle)
        # panic with pyo3's PanicException, a BaseException, on damaged data.
        raise _undecodable(syntax, error) from None


def _code_string(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
    except Exception:
        return None
    text = value.strip().upper() if isinstance(value, str) else ""
    return text if _CODE_STRING.fullmatch(text) else None


# --- DICOM pixels to [0, 1] ---------------------------------------------------------

def _display_pixels(frame: np.ndarray, decoded: dict, dataset: Dataset,
                    index: int) -> np.ndarray:
    photometric = decoded.get("photometric_interpretation")
    if photometric in _GRAYSCALE and frame.ndim == 2:
        display = _frame_display_attributes(dataset, index)
        return _grayscale_unit(frame, display, invert=photometric == "MONOCHROME1")
    if photometric == _PALETTE and frame.ndim == 2:
        return _palette_unit(frame, dataset)
    if photometric == "RGB" and frame.ndim == 3 and frame.shape[2] == 3:
        return _scaled_unit(frame, int(decoded.get("bits_stored") or frame.dtype.itemsize * 8))
    raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                        "the decoded frame's shape or color space is not one this job "
                        "scores (grayscale, RGB or palette color)")


def _frame_display_attributes(dataset: Dataset, index: int) -> Dataset:
    """The modality and VOI attributes that apply to one frame, as a small data set.

    Enhanced objects keep them in functional groups (shared, overridden per frame);
    pydicom's display functions read them from the top level of a data set.
    """
    display = Dataset()
    for keyword in ("BitsStored", "PixelRepresentation", "PhotometricInterpretation",
                    *_DISPLAY_KEYWORDS):
        _copy_if_present(dataset, display, keyword)
    frame_groups = (_sequence_item(dataset, "SharedFunctionalGroupsSequence", 0),
                    _sequence_item(dataset, "PerFrameFunctionalGroupsSequence", index))
    for group in frame_groups:  # per-frame values override shared ones
        for macro in _FUNCTIONAL_MACROS:
            values = _sequence_item(group, macro, 0) if group is not None else None
            if values is not None:
                for keyword in _DISPLAY_KEYWORDS:
                    _copy_if_present(values, display, keyword)
    # LUT data stored as OW is decoded with the file's byte order.
    display.set_original_encoding(*dataset.original_encoding)
    return display


def _copy_if_present(source: Dataset, target: Dataset, keyword: str) -> None:
    try:
        if keyword in source and source[keyword].value not in (None, "", []):
            target[keyword] = source[keyword]
    except Exception:  # malformed value: treated as absent
        logger.debug("ignored a malformed %s", keyword)


def _sequence_item(dataset: Dataset, keyword: str, index: int) -> Dataset | None:
    try:
        items = dataset.get(keyword)
        return items[index] if items and len(items) > index else None
    except Exception:
        return None


def _grayscale_unit(frame: np.ndarray, display: Dataset, invert: bool) -> np.ndarray:
    affine = _affine_unit_transform(frame, display)
    if affine is None:
        unit = _lut_unit(frame, display)
        return np.subtract(1.0, unit, out=unit) if invert else unit
    scale, offset = affine
    if invert:  # 1 - (x * a + b), folded into the same pass
        scale, offset = -scale, 1.0 - offset
    return _affine_to_unit(frame, scale, offset)


def _affine_to_unit(frame: np.ndarray, scale: float, offset: float) -> np.ndarray:
    unit = frame.astype(np.float32)
    unit *= np.float32(scale)
    unit += np.float32(offset)
    return np.clip(unit, 0.0, 1.0, out=unit)


def _affine_unit_transform(frame: np.ndarray, display: Dataset) -> tuple[float, float] | None:
    """(a, b) with unit = clip(a * stored + b) for rescale + linear window or min-max.

    PS3.3 C.11.2.1.2.1, LINEAR: (v - (c - 0.5)) / (w - 1) + 0.5 clipped to [0, 1] is
    pydicom's windowing divided by its output range [y_min, y_max], with the rescale
    v = slope * stored + intercept folded in. None: use pydicom's functions instead.
    """
    if "ModalityLUTSequence" in display or _has_voi_lut(display):
        return None
    slope, intercept = _rescale(display)
    window = _first_window(display)
    if window is None:
        return _min_max_transform(frame, slope)
    center, width, function = window
    if function == "LINEAR" and width > 1:
        scale, offset = slope / (width - 1), (intercept - center + 0.5) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        scale, offset = slope / width, (intercept - center) / width + 0.5
    else:  # SIGMOID, or a LINEAR window one value wide (a threshold)
        return None
    if not (math.isfinite(np.float32(scale)) and math.isfinite(np.float32(offset))):
        return _min_max_transform(frame, slope)
    return scale, offset


def _min_max_transform(frame: np.ndarray, slope: float) -> tuple[float, float]:
    """Min-max of the rescaled frame: the rescale is monotonic, so only its sign matters."""
    low, high = float(frame.min()), float(frame.max())
    if high == low or slope == 0:
        return 0.0, 0.0
    scale = 1.0 / (high - low)
    return (scale, -low * scale) if slope > 0 else (-scale, high * scale)


def _rescale(display: Dataset) -> tuple[float, float]:
    slope = _finite_float(display.get("RescaleSlope"))
    intercept = _finite_float(display.get("RescaleIntercept"))
    if slope is None or intercept is None:
        return 1.0, 0.0
    return slope, intercept


def _first_window(display: Dataset) -> tuple[float, float, str] | None:
    """(center, width, function) of the first window, or None when there is no usable one."""
    center = _finite_float(_first(display.get("WindowCenter")))
    width = _finite_float(_first(display.get("WindowWidth")))
    function = str(display.get("VOILUTFunction") or "LINEAR").strip().upper()
    if center is None or width is None:
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"  # as most viewers do with an unknown function
    # Widths the standard forbids (pydicom raises on them): use min-max instead.
    if width < (1 if function == "LINEAR" else 0) or width == 0:
        logger.debug("window width out of range; using min-max")
        return None
    return center, width, function


def _first(value):
    """The first of several values (Window Center/Width may hold alternatives)."""
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def _finite_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _has_voi_lut(display: Dataset) -> bool:
    item = _sequence_item(display, "VOILUTSequence", 0)
    return item is not None and "LUTDescriptor" in item and "LUTData" in item


def _lut_unit(frame: np.ndarray, display: Dataset) -> np.ndarray:
    """Modality and VOI through pydicom's functions, scaled by the VOI output range."""
    try:
        values = apply_modality_lut(frame, display)
        if _has_voi_lut(display) and not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
        if _has_voi_lut(display) or _first_window(display) is not None:
            with np.errstate(over="ignore"):  # a SIGMOID saturates through exp overflow
                output = apply_voi_lut(values, display, index=0, prefer_lut=True)
            low, high = _voi_output_range(display)
        else:
            output = values
            low, high = float(values.min()), float(values.max())
    except MemoryError:
        raise
    except Exception as error:  # malformed LUT descriptors or data
        logger.debug("modality/VOI transform failed: %s", type(error).__name__)
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            "the Modality or VOI LUT in the header cannot be applied "
                            f"({type(error).__name__})") from None
    return _range_to_unit(output, low, high)


def _voi_output_range(display: Dataset) -> tuple[float, float]:
    """The [y_min, y_max] pydicom's VOI LUT or windowing maps onto (PS3.3 C.11.2)."""
    if _has_voi_lut(display):
        return 0.0, float(2 ** int(display.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if "ModalityLUTSequence" in display:
        return 0.0, float(2 ** int(display.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(display.get("BitsStored") or 16)
    if display.get("PixelRepresentation", 0) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = _rescale(display)
    if "RescaleSlope" in display and "RescaleIntercept" in display:
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _range_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(values - low) / (high - low) in float32, clipped; an empty range gives zeros."""
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    scale = 1.0 / (high - low)
    return _affine_to_unit(values, scale, -low * scale)


def _palette_unit(frame: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored indices through the Palette Color LUT, as RGB in [0, 1]."""
    table, first_mapped = _palette_table(dataset)
    if frame.dtype == np.uint8 and first_mapped == 0 and len(table) >= 256:
        indices = frame
    else:
        # Below the first mapped value take the first entry, above the last the last.
        indices = frame.astype(np.int64) - first_mapped
        np.clip(indices, 0, len(table) - 1, out=indices)
    # Each RGB triple taken as one 12-byte item: about 4x faster than table[indices].
    triples = table.view(np.dtype((np.void, table.strides[0]))).ravel()
    return np.take(triples, indices).view(np.float32).reshape(*indices.shape, 3)


# Expanding a segmented palette is slow pure Python in pydicom, and a modality sends
# the same palette with every image: keep a few expanded tables.
_PALETTE_TABLES: dict[bytes, tuple[np.ndarray, int]] = {}
_PALETTE_TABLES_KEPT = 16


def _palette_table(dataset: Dataset) -> tuple[np.ndarray, int]:
    """(entries x 3 float32 table, first mapped value) for the data set's palette."""
    try:
        palette = _palette_dataset(dataset)
        key = _palette_key(palette)
        cached = _PALETTE_TABLES.get(key)
        if cached is not None:
            return cached
        entries, first_mapped, depth = palette.RedPaletteColorLookupTableDescriptor
        stored = np.arange(first_mapped, first_mapped + (entries or 2 ** 16))
        rgb = apply_color_lut(stored, palette)[..., :3]
    except MemoryError:
        raise
    except Exception as error:
        logger.debug("palette lookup failed: %s", type(error).__name__)
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            "the Palette Color Lookup Table cannot be applied "
                            f"({type(error).__name__})") from None
    # Some writers declare 16 bits for 8-bit entries; trust the narrower of the two.
    unit = np.ascontiguousarray(_scaled_unit(rgb, min(int(depth), rgb.dtype.itemsize * 8)))
    table = unit, int(first_mapped)
    if len(_PALETTE_TABLES) >= _PALETTE_TABLES_KEPT:
        _PALETTE_TABLES.clear()
    _PALETTE_TABLES[key] = table
    return table


_PALETTE_COLORS = ("Red", "Green", "Blue", "Alpha")
_PALETTE_KEYWORDS = (
    *(f"{color}PaletteColorLookupTable{part}"
      for color in _PALETTE_COLORS for part in ("Descriptor", "Data")),
    *(f"Segmented{color}PaletteColorLookupTableData" for color in _PALETTE_COLORS),
)


def _palette_dataset(dataset: Dataset) -> Dataset:
    """The palette elements alone, with OW table data in little-endian order.

    pydicom reads non-segmented OW tables as little endian whatever the file's
    byte order, so tables from big-endian files are swapped here first.
    """
    palette = Dataset()
    for keyword in ("PixelPresentation", *_PALETTE_KEYWORDS):
        if keyword in dataset:
            palette[keyword] = dataset[keyword]
    little_endian = dataset.original_encoding[1]
    if not little_endian:
        for color in _PALETTE_COLORS:
            keyword = f"{color}PaletteColorLookupTableData"
            data = palette.get(keyword)
            if isinstance(data, bytes) and len(data) % 2 == 0 and _palette_bits(palette) > 8:
                palette[keyword].value = np.frombuffer(data, ">u2").astype("<u2").tobytes()
    palette.set_original_encoding(dataset.original_encoding[0], little_endian,
                                  dataset.original_character_set)
    return palette


def _palette_bits(palette: Dataset) -> int:
    descriptor = palette.get("RedPaletteColorLookupTableDescriptor") or (0, 0, 8)
    return int(descriptor[2])


def _palette_key(palette: Dataset) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(palette.original_encoding[1]).encode())
    for keyword in _PALETTE_KEYWORDS:
        value = palette.get(keyword)
        digest.update(keyword.encode())
        digest.update(value if isinstance(value, bytes) else repr(value).encode())
    return digest.digest()


def _scaled_unit(samples: np.ndarray, bits: int) -> np.ndarray:
    bits = min(max(bits, 1), samples.dtype.itemsize * 8)
    return _affine_to_unit(samples, 1.0 / (2 ** bits - 1), 0.0)


# --- PNG and JPEG -------------------------------------------------------------------

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_GRAY_MODES = ("1", "L", "LA", "La")


def _decode_raster(data: bytes, kind: str, limits: ImageLimits) -> DecodedImage:
    format_name = "PNG" if kind == PNG else "JPEG"
    try:
        image = Image.open(io.BytesIO(data), formats=[format_name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _raster_too_large(format_name, limits) from None
    except Exception as error:  # UnidentifiedImageError, OSError, SyntaxError ...
        logger.debug("raster header unreadable: %s", type(error).__name__)
        raise ImageRejected(Reason.NOT_AN_IMAGE,
                            f"the {format_name} header cannot be parsed "
                            f"({type(error).__name__})") from None
    with image:
        width, height = image.size
        if width * height > limits.max_frame_pixels:
            raise _raster_too_large(format_name, limits, width, height)
        try:
            image.load()
            pixels, photometric = _raster_unit(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _raster_too_large(format_name, limits, width, height) from None
        except MemoryError:
            raise
        except Exception as error:
            logger.debug("raster data undecodable: %s", type(error).__name__)
            raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                                f"the {format_name} image data cannot be decoded "
                                f"({type(error).__name__}); the file may be truncated "
                                "or corrupt") from None
    return DecodedImage(pixels=pixels, photometric_interpretation=photometric)


def _raster_too_large(format_name: str, limits: ImageLimits, width: int | None = None,
                      height: int | None = None) -> ImageRejected:
    size = f" is {width} x {height} pixels," if width is not None else ""
    return ImageRejected(Reason.OVER_SIZE_LIMITS,
                         f"the {format_name} image{size} over the limit of "
                         f"{limits.max_frame_pixels} pixels (max_frame_pixels) or "
                         "Pillow's decompression-bomb limit")


def _raster_unit(image: Image.Image) -> tuple[np.ndarray, str]:
    """Pillow's pixels as float32 in [0, 1], and MONOCHROME2 or RGB."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _scaled_unit(np.asarray(image), 16), "MONOCHROME2"
    if image.mode in ("I", "F"):
        return _min_max_unit(np.asarray(image)), "MONOCHROME2"
    if image.mode in _GRAY_MODES:
        return _scaled_unit(np.asarray(image.convert("L")), 8), "MONOCHROME2"
    # RGB, RGBA (alpha dropped), P, CMYK, YCbCr ...
    return _scaled_unit(np.asarray(image.convert("RGB")), 8), "RGB"


def _min_max_unit(values: np.ndarray) -> np.ndarray:
    """Min-max over the finite values; NaN and infinities become 0."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(values[finite].min()), float(values[finite].max())
    return _range_to_unit(np.where(finite, values, low), low, high)

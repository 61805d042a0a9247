"""DICOM through pydicom: reading the data set under the limits, then the display pipeline
(modality LUT, VOI LUT or window, MONOCHROME1 inversion, color and palettes) to [0, 1]."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from streaming.imaging.limits import (GRAYSCALE, PALETTE, check_compressed_frame,
                                     check_deflated_size, checked_geometry, data_set_bytes,
                                     not_dicom)
from streaming.imaging.frames import (decode_frame, frame_display_attributes, sequence_item,
                                     transfer_syntax)
from streaming.imaging.raster import affine_to_unit, range_to_unit, scaled_unit
from streaming.imaging.types import DecodedImage, ImageLimits, ImageRejected
from streaming.contracts.reasons import Reason

logger = logging.getLogger(__name__)


_UNDEFINED_LENGTH = 0xFFFFFFFF


_PIXEL_DATA_TAG = 0x7FE00010


# A DICOM Code String as the finding schema accepts it; anything else is dropped.
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def decode_dicom(data: bytes, limits: ImageLimits) -> DecodedImage:
    dataset = _read_dataset(data, limits)
    _require_pixel_data(dataset, data, limits)
    geometry = checked_geometry(dataset, limits)
    index = geometry.frames // 2
    syntax = transfer_syntax(dataset)
    if syntax.is_encapsulated:
        check_compressed_frame(dataset, syntax, geometry, index)
    frame, decoded = decode_frame(dataset, syntax, index)
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
        check_deflated_size(data, limits.max_file_bytes)
    try:
        # The data is in memory already: nothing is deferred, nothing re-opened.
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except MemoryError:
        raise
    except Exception as error:  # pydicom raises many types for malformed input.
        raise not_dicom("the DICOM header cannot be parsed", error) from None
    if not has_preamble and "PixelData" not in dataset:
        # Without the DICM prefix only a data set that clearly is an image counts.
        raise ImageRejected(Reason.NOT_AN_IMAGE,
                            "the content has no DICOM prefix and does not parse as a "
                            "DICOM image")
    return dataset


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
        body = data_set_bytes(data, limits.max_file_bytes)
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


def _code_string(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
    except Exception:
        return None
    text = value.strip().upper() if isinstance(value, str) else ""
    return text if _CODE_STRING.fullmatch(text) else None


def _display_pixels(frame: np.ndarray, decoded: dict, dataset: Dataset,
                    index: int) -> np.ndarray:
    photometric = decoded.get("photometric_interpretation")
    if photometric in GRAYSCALE and frame.ndim == 2:
        display = frame_display_attributes(dataset, index)
        return _grayscale_unit(frame, display, invert=photometric == "MONOCHROME1")
    if photometric == PALETTE and frame.ndim == 2:
        return _palette_unit(frame, dataset)
    if photometric == "RGB" and frame.ndim == 3 and frame.shape[2] == 3:
        return scaled_unit(frame, int(decoded.get("bits_stored") or frame.dtype.itemsize * 8))
    raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                        "the decoded frame's shape or color space is not one this job "
                        "scores (grayscale, RGB or palette color)")


def _grayscale_unit(frame: np.ndarray, display: Dataset, invert: bool) -> np.ndarray:
    affine = _affine_unit_transform(frame, display)
    if affine is None:
        unit = _lut_unit(frame, display)
        return np.subtract(1.0, unit, out=unit) if invert else unit
    scale, offset = affine
    if invert:  # 1 - (x * a + b), folded into the same pass
        scale, offset = -scale, 1.0 - offset
    return affine_to_unit(frame, scale, offset)


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
    item = sequence_item(display, "VOILUTSequence", 0)
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
    return range_to_unit(output, low, high)


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
    unit = np.ascontiguousarray(scaled_unit(rgb, min(int(depth), rgb.dtype.itemsize * 8)))
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

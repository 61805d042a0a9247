"""Frame access in a DICOM object: the transfer syntax, decoding one frame through
pydicom's pixel backends, and the per-frame display attributes of Enhanced objects."""

from __future__ import annotations

import logging

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import as_pixel_options, get_decoder

from streaming.imaging.types import ImageRejected
from streaming.contracts.reasons import Reason

logger = logging.getLogger(__name__)


_FUNCTIONAL_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


_DISPLAY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
                     "VOILUTFunction", "ModalityLUTSequence", "VOILUTSequence")


def transfer_syntax(dataset: Dataset) -> dicom_uid.UID:
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


def undecodable(syntax: dicom_uid.UID, error: Exception) -> ImageRejected:
    logger.debug("pixel data not decodable: %s", type(error).__name__)
    return ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                         f"the {_syntax_name(syntax)} pixel data cannot be decoded "
                         f"({type(error).__name__}); the file may be truncated or corrupt")


def decode_frame(dataset: Dataset, syntax: dicom_uid.UID,
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
        raise undecodable(syntax, error) from None


def frame_display_attributes(dataset: Dataset, index: int) -> Dataset:
    """The modality and VOI attributes that apply to one frame, as a small data set.

    Enhanced objects keep them in functional groups (shared, overridden per frame);
    pydicom's display functions read them from the top level of a data set.
    """
    display = Dataset()
    for keyword in ("BitsStored", "PixelRepresentation", "PhotometricInterpretation",
                    *_DISPLAY_KEYWORDS):
        _copy_if_present(dataset, display, keyword)
    frame_groups = (sequence_item(dataset, "SharedFunctionalGroupsSequence", 0),
                    sequence_item(dataset, "PerFrameFunctionalGroupsSequence", index))
    for group in frame_groups:  # per-frame values override shared ones
        for macro in _FUNCTIONAL_MACROS:
            values = sequence_item(group, macro, 0) if group is not None else None
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


def sequence_item(dataset: Dataset, keyword: str, index: int) -> Dataset | None:
    try:
        items = dataset.get(keyword)
        return items[index] if items and len(items) > index else None
    except Exception:
        return None

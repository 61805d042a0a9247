"""Broken and hostile image files: from real files cut or garbled, or built with pydicom.

Each builder writes one file (or returns its bytes) and says what is wrong with it;
which dead-letter reason the job must give it is decided by the scenarios that use
them (``hostile_inputs.py``, ``phi.py``), not here.

- ``announce``: the event a modality sends for a file, readable header or not.
- DICOM that is not an image: a structured report, an encapsulated PDF, a key
  object selection, a presentation state (waveforms come from pydicom's test files).
- Pixel-count bombs: headers claiming more rows x columns, frames or samples than the
  job's limits, over a few bytes of pixel data; a deflated data set that inflates
  past the file limit; PNG and JPEG headers claiming enormous images.
- Cuts and corruption of real files: ``truncated`` at a chosen byte, compressed
  frames whose codestream header is garbled (JPEG, JPEG-LS, JPEG 2000, RLE), or
  whose codestream claims more pixels than the DICOM header.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, UID,
                         generate_uid)

from streaming.contracts.events import ImageEvent, new_event
from streaming.tools.modality import event_for_file

_ITEM = b"\xfe\xff\x00\xe0"
_LONG_HEADER_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- the event a modality sends for any file ----------------------------------------

def announce(path: Path, sender: str) -> ImageEvent:
    """The event for ``path``: UIDs from its header, or fresh ones when it has none.

    A modality announces what it stored even when the header cannot be read.
    """
    try:
        return event_for_file(path, sender=sender)
    except ValueError:  # no UIDs in the header, or not DICOM at all
        return new_event(study_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
                         sop_instance_uid=generate_uid(), modality="OT", uri=str(path),
                         content_type="application/dicom", sender=sender)


# -- DICOM objects built from scratch ---------------------------------------------------

def write_dataset(path: Path, dataset: Dataset,
                  transfer_syntax: UID = ExplicitVRLittleEndian) -> Path:
    """Save ``dataset`` as a DICOM Part 10 file with the given transfer syntax."""
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)
    return path


def _instance(sop_class: UID, modality: str) -> Dataset:
    """A data set with fresh study, series and instance UIDs."""
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: any generated text encodes
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID, dataset.StudyInstanceUID = generate_uid(), generate_uid()
    dataset.SeriesInstanceUID, dataset.Modality = generate_uid(), modality
    return dataset


def structured_report(path: Path, text: str = "") -> Path:
    """A Basic Text SR: a container holding one text item (``text``); no pixels."""
    report = _instance(pydicom.uid.BasicTextSRStorage, "SR")
    report.ValueType, report.CompletionFlag = "CONTAINER", "COMPLETE"
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text[:1000]
    report.ContentSequence = Sequence([item])
    return write_dataset(path, report)


def encapsulated_pdf(path: Path, text: str = "") -> Path:
    """An Encapsulated PDF instance (a document, not an image)."""
    document = _instance(pydicom.uid.EncapsulatedPDFStorage, "DOC")
    pdf = f"%PDF-1.4\n% {text[:200]}\n%%EOF\n".encode("utf-8", "replace")
    document.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return write_dataset(path, document)


def key_object_selection(path: Path, text: str = "") -> Path:
    """A Key Object Selection document (references to images, no pixels of its own)."""
    selection = _instance(pydicom.uid.KeyObjectSelectionDocumentStorage, "KO")
    selection.ValueType, selection.ContinuityOfContent = "CONTAINER", "SEPARATE"
    selection.SeriesDescription = text[:64]
    return write_dataset(path, selection)


def presentation_state(path: Path, text: str = "") -> Path:
    """A Grayscale Softcopy Presentation State (display settings, no pixels)."""
    state = _instance(pydicom.uid.GrayscaleSoftcopyPresentationStateStorage, "PR")
    state.ContentLabel, state.ContentDescription = "HOSTILE", text[:64]
    state.PresentationLUTShape = "IDENTITY"
    return write_dataset(path, state)


def pixel_bomb(path: Path, *, rows: int, columns: int, frames: int = 1, samples: int = 1,
               bits: int = 16, pixel_bytes: int = 64) -> Path:
    """A header claiming rows x columns x frames x samples over ``pixel_bytes`` of data."""
    image = _instance(pydicom.uid.SecondaryCaptureImageStorage, "OT")
    image.Rows, image.Columns = rows, columns
    if frames != 1:
        image.NumberOfFrames = frames
    image.SamplesPerPixel = samples
    image.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples == 3:
        image.PlanarConfiguration = 0
    image.BitsAllocated, image.BitsStored, image.HighBit = bits, bits, bits - 1
    image.PixelRepresentation = 0
    image.PixelData = b"\x00" * (pixel_bytes + pixel_bytes % 2)
    return write_dataset(path, image)


def deflate_bomb(path: Path, inflated_bytes: int) -> Path:
    """A deflated data set that inflates to more than ``inflated_bytes``.

    The bulk is a private OB element of zeros, which deflate shrinks about a
    thousandfold: a few hundred KB on disk.
    """
    header = _instance(pydicom.uid.SecondaryCaptureImageStorage, "OT")
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
    header.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, header, enforce_file_format=True)
    meta_end = _meta_end(buffer.getvalue())
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [compressor.compress(_dataset_bytes(header))]
    padding = inflated_bytes + 1024 + (inflated_bytes % 2)
    # A private creator (0099,0010), then (0099,1000) OB holding the zeros: group
    # 0099 sorts after the header's groups, so the data set stays in tag order.
    creator = b"HOSTILE "
    body.append(compressor.compress(struct.pack("<HH2sH", 0x0099, 0x0010, b"LO", len(creator))
                                    + creator))
    body.append(compressor.compress(struct.pack("<HH2sHI", 0x0099, 0x1000, b"OB", 0, padding)))
    zeros = bytes(1 << 20)
    for _ in range(padding >> 20):
        body.append(compressor.compress(zeros))
    body.append(compressor.compress(bytes(padding & ((1 << 20) - 1))))
    body.append(compressor.flush())
    path.write_bytes(buffer.getvalue()[:meta_end] + b"".join(body))
    return path


def _dataset_bytes(dataset: Dataset) -> bytes:
    """The data set (no meta) in explicit VR little endian."""
    plain = Dataset()
    plain.update(dataset)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, plain, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _meta_end(data: bytes) -> int:
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return stream.tell()


# -- raster headers -------------------------------------------------------------------

def png_header_bomb(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height over one tiny IDAT chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(_PNG_SIGNATURE + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def jpeg_header_bomb(path: Path, width: int, height: int) -> Path:
    """A real 8 x 8 baseline JPEG whose frame header (SOF0) is patched to width x height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes (almost) no disk: a hole, on most file systems."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


# -- cutting and garbling real files ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ElementSpan:
    """Where one top-level element lies in a file: [start, end), value from value_start."""
    tag: int
    vr: str | None
    start: int
    value_start: int
    end: int


def element_spans(data: bytes) -> list[ElementSpan]:
    """The top-level elements after the file meta information, in file order.

    Only for files with a preamble and a non-deflated transfer syntax: the offsets
    are offsets into ``data``. An element ends where the next one starts, which also
    holds for undefined lengths (sequences, encapsulated pixel data).
    """
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    syntax = UID(meta.TransferSyntaxUID)
    if syntax == DeflatedExplicitVRLittleEndian:
        raise ValueError("deflated files have no raw element offsets")
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    raw = list(data_element_generator(stream, implicit, little, defer_size=None))
    starts, cursor = [], _meta_end(data)
    for element in raw:
        start, cursor = _element_start(element, implicit, cursor)
        starts.append(start)
    ends = starts[1:] + [len(data)]
    return [ElementSpan(int(e.tag), None if implicit else e.VR, start, start + _header(e, implicit),
                        end) for e, start, end in zip(raw, starts, ends)]


def _header(element, implicit: bool) -> int:
    return 8 if implicit or element.VR not in _LONG_HEADER_VRS else 12


def _element_start(element, implicit: bool, cursor: int | None) -> tuple[int, int | None]:
    """(where the element starts, where it ends when its length is defined, else None)."""
    value_tell = getattr(element, "value_tell", None)
    if value_tell is None:
        # pydicom yields a sequence of undefined length already parsed, without its
        # offset: it starts where the previous element ended.
        if cursor is None:
            raise ValueError("an element's offset cannot be told")
        return cursor, None
    length = element.length
    end = value_tell + length if length != 0xFFFFFFFF else None
    return value_tell - _header(element, implicit), end


def pixel_data_value_start(data: bytes) -> int:
    """Where the value of Pixel Data (7FE0,0010) starts in ``data``."""
    dataset = pydicom.dcmread(io.BytesIO(data), defer_size=None)
    raw = dataset.get_item(0x7FE00010)
    if raw is None or getattr(raw, "value_tell", None) is None:
        raise ValueError("the file has no Pixel Data whose offset can be told")
    return raw.value_tell


def first_fragment(data: bytes) -> tuple[int, int]:
    """(offset, length) in ``data`` of the first fragment of encapsulated Pixel Data.

    For a single-frame object that fragment starts the only frame's codestream.
    """
    position = pixel_data_value_start(data)
    if data[position:position + 4] != _ITEM:
        raise ValueError("the Pixel Data is not encapsulated")
    position += 8 + struct.unpack("<I", data[position + 4:position + 8])[0]  # offset table
    if data[position:position + 4] != _ITEM:
        raise ValueError("no fragment after the Basic Offset Table")
    length = struct.unpack("<I", data[position + 4:position + 8])[0]
    return position + 8, length


def codec_of(fragment: bytes) -> str:
    """'jpeg' (JPEG and JPEG-LS), 'j2k' or 'rle', judged by the codestream's first bytes."""
    if fragment.startswith(b"\xff\xd8"):
        return "jpeg"
    if fragment.startswith(b"\xff\x4f\xff\x51"):
        return "j2k"
    return "rle"


def _jpeg_scan_start(fragment: bytes) -> int:
    """Offset of the SOS marker: everything before it is the frame's headers and tables."""
    position = 2
    while position + 4 <= len(fragment) and fragment[position] == 0xFF:
        marker = fragment[position + 1]
        if marker == 0xDA:
            return position
        if marker == 0xFF:
            position += 1
            continue
        position += 2 + struct.unpack(">H", fragment[position + 2:position + 4])[0]
    raise ValueError("no start of scan in the JPEG codestream")


GARBLINGS = ("headers_to_fill", "headers_to_zero", "no_start_marker")


def garbled_codestream(data: bytes, how: str, filler: int = 0) -> bytes:
    """``data`` with the first frame's codestream header destroyed, so no decoder can read it.

    ``how`` (one of GARBLINGS):
    - ``headers_to_fill``: JPEG/JPEG-LS markers before the scan, or the JPEG 2000 main
      header after SOC, overwritten with 0xFF fill bytes; RLE segment offsets too.
    - ``headers_to_zero``: the same bytes zeroed.
    - ``no_start_marker``: the SOI/SOC marker replaced by bytes that are no marker;
      for RLE, the first segment made to start past the fragment's end. (Offsets
      into the data that merely point at the wrong bytes can still "decode": RLE
      has no check, so those are not used.)
    """
    offset, length = first_fragment(data)
    fragment = bytearray(data[offset:offset + length])
    codec = codec_of(bytes(fragment))
    if codec == "rle":
        _garble_rle(fragment, how, filler)
    elif how == "no_start_marker":
        fragment[0:2] = bytes([filler & 0x7F, 0x00])  # never 0xFF: not a marker
    else:
        end = (_jpeg_scan_start(bytes(fragment)) if codec == "jpeg"
               else bytes(fragment).find(b"\xff\x90"))  # first tile-part (SOT)
        start = 2
        fragment[start:end] = (b"\xff" if how == "headers_to_fill" else b"\x00") * (end - start)
    return data[:offset] + bytes(fragment) + data[offset + length:]


def _garble_rle(fragment: bytearray, how: str, filler: int) -> None:
    # The RLE header is a segment count and 15 segment offsets; decoders go by the
    # offsets (a wrong count alone still decodes), so the offsets are what is broken.
    if how == "headers_to_fill":
        fragment[4:64] = b"\xff" * 60
    elif how == "headers_to_zero":
        fragment[4:64] = bytes(60)
    else:  # the first segment would start past the end of the fragment
        fragment[4:8] = struct.pack("<I", len(fragment) + filler % 4096)


def codestream_size_bomb(data: bytes, rows: int, columns: int) -> bytes:
    """``data`` whose first frame's codestream header claims rows x columns.

    JPEG-family frames get a new SOF size, JPEG 2000 a new SIZ image size. The
    DICOM header is left as it was, so the codestream claims more pixels than the
    header: a decoder trusting the codestream would allocate for that many.
    """
    offset, length = first_fragment(data)
    fragment = bytearray(data[offset:offset + length])
    codec = codec_of(bytes(fragment))
    if codec == "jpeg":
        position = 2
        while fragment[position] == 0xFF and fragment[position + 1] not in _START_OF_FRAME:
            position += 2 + struct.unpack(">H", fragment[position + 2:position + 4])[0]
        fragment[position + 5:position + 9] = struct.pack(">HH", rows, columns)
    elif codec == "j2k":
        # SIZ: marker, Lsiz, Rsiz, then Xsiz, Ysiz (width, height) and the offsets.
        fragment[8:16] = struct.pack(">II", columns, rows)
        fragment[16:24] = bytes(8)
    else:
        raise ValueError("RLE frames carry no image size to inflate")
    return data[:offset] + bytes(fragment) + data[offset + length:]


_START_OF_FRAME = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def truncated(data: bytes, cut: int) -> bytes:
    """The first ``cut`` bytes: a file whose copy or transfer stopped early."""
    if not 0 <= cut < len(data):
        raise ValueError(f"cut {cut} is not inside a file of {len(data)} bytes")
    return data[:cut]

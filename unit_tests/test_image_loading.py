"""Image loading on real files: streaming.imaging.access and streaming.imaging.decoding.

The corpus is every file pydicom and pydicom-data ship (real scanner output in
most transfer syntaxes), plus copies of them made hostile with pydicom: truncated,
corrupted, oversized, or carrying patient-identity canaries. No mocks; the one
stand-in is a Beam filesystem for a remote scheme, because no cloud store is
reachable here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import external_data_sources
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi_lut,
                            apply_windowing, pixel_array)

from apache_beam.io.localfilesystem import LocalFileSystem
from streaming.imaging.access import AccessPolicy, open_image_bytes
from streaming.imaging.decoding import DICOM, JPEG, PNG, decode_image_bytes, load_image
from streaming.local.reference_data import scanner_files
from streaming.imaging.types import DecodedImage, ImageLimits, ImageRejected
from streaming.contracts.reasons import Reason

if "pydicom-data" not in external_data_sources():
    pytest.skip("pydicom-data is not installed: pip install -e '.[test]' (its real "
                "scanner files are what these tests decode)", allow_module_level=True)

# pydicom warns about the deliberately odd files in this corpus. (Its warnings
# repeat header values, so a worker must not pass them to its logs.)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

LIMITS = ImageLimits()
# Files that hold Pixel Data and are still refused, each with why. A change that
# starts refusing a good file, or accepts one of these, fails the corpus test.
REJECTED_IMAGES = {
    # pydicom's deliberately broken JPEG (a misplaced marker); JPGExtended.dcm is its fixed twin.
    "JPEG-lossy.dcm": Reason.UNDECODABLE_PIXEL_DATA,
    # A sequence delimiter sits inside the J2K SIZ marker; pydicom alone fails on it too.
    "JPEG2000-embedded-sequence-delimiter.dcm": Reason.UNDECODABLE_PIXEL_DATA,
    # Pixel Data 62 bytes shorter than Rows x Columns needs.
    "MR_truncated.dcm": Reason.UNDECODABLE_PIXEL_DATA,
    # The encapsulated Pixel Data ends before its sequence delimiter.
    "emri_small_jpeg_2k_lossless_too_short.dcm": Reason.UNDECODABLE_PIXEL_DATA,
    # Number of Frames is "1A", not an integer.
    "badVR.dcm": Reason.UNDECODABLE_PIXEL_DATA,
    # Parser test files: a Pixel Data element but no Rows/Columns to read it with.
    "meta_missing_tsyntax.dcm": Reason.UNDECODABLE_PIXEL_DATA,
    "nested_priv_SQ.dcm": Reason.UNDECODABLE_PIXEL_DATA,
}

# Files without Pixel Data or not DICOM at all (checked independently below).
NOT_IMAGES = {
    "README.txt": Reason.NOT_AN_IMAGE,
    "crayons.icc": Reason.NOT_AN_IMAGE,
    "rtplan.dump": Reason.NOT_AN_IMAGE,
    "rtstruct.dump": Reason.NOT_AN_IMAGE,
    "test1.json": Reason.NOT_AN_IMAGE,
    "test_PN.json": Reason.NOT_AN_IMAGE,
    "zipMR.gz": Reason.NOT_AN_IMAGE,
    # No DICM prefix and no Pixel Data: not accepted as a bare data set.
    "ExplVR_BigEndNoMeta.dcm": Reason.NOT_AN_IMAGE,
    "ExplVR_LitEndNoMeta.dcm": Reason.NOT_AN_IMAGE,
    "no_meta.dcm": Reason.NOT_AN_IMAGE,
    "rtstruct.dcm": Reason.NOT_AN_IMAGE,
    # The header itself is cut short.
    "rtplan_truncated.dcm": Reason.NOT_AN_IMAGE,
    # Complete DICOM objects that are not images.
    "UN_sequence.dcm": Reason.NO_PIXEL_DATA,
    "empty_charset_LEI.dcm": Reason.NO_PIXEL_DATA,
    "no_meta_group_length.dcm": Reason.NO_PIXEL_DATA,
    "priv_SQ.dcm": Reason.NO_PIXEL_DATA,
    "reportsi.dcm": Reason.NO_PIXEL_DATA,
    "reportsi_with_empty_number_tags.dcm": Reason.NO_PIXEL_DATA,
    "rtplan.dcm": Reason.NO_PIXEL_DATA,
    "test-SR.dcm": Reason.NO_PIXEL_DATA,
    "waveform_ecg.dcm": Reason.NO_PIXEL_DATA,
}

CANARIES = {
    "PatientName": "Canaryfield^Philomena",
    "PatientID": "CANARY-ID-90817",
    "PatientBirthDate": "19030711",
    "AccessionNumber": "CANACC55102",
    "InstitutionName": "Canary Ridge Infirmary",
    "ReferringPhysicianName": "Canarydoc^Ottoline",
}


# --- Helpers ------------------------------------------------------------------------

def sample_path(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} not found: is pydicom-data installed?"
    return Path(path)


def file_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def read_dataset(name: str) -> Dataset:
    return pydicom.dcmread(sample_path(name))


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def decode(data: bytes, limits: ImageLimits = LIMITS) -> DecodedImage:
    return decode_image_bytes(data, DICOM, limits)


def rejection(data: bytes, limits: ImageLimits = LIMITS,
              content_type: str = DICOM) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        decode_image_bytes(data, content_type, limits)
    return caught.value


def assert_display_ready(image: DecodedImage) -> None:
    pixels = image.pixels
    assert pixels.dtype == np.float32
    assert pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def pixel_data_offset(data: bytes) -> int:
    """Where the Pixel Data element's value starts in the file."""
    return pydicom.dcmread(io.BytesIO(data)).get_item("PixelData").value_tell


def first_fragment_offset(data: bytes) -> int:
    pixel_data = pydicom.dcmread(io.BytesIO(data)).PixelData
    after_offsets = 8 + int.from_bytes(pixel_data[4:8], "little")
    fragment = next(generate_fragments(pixel_data[after_offsets:]))
    return data.index(fragment[:64])


def flipped(data: bytes, start: int, length: int) -> bytes:
    corrupted = bytearray(data)
    for position in range(start, start + length):
        corrupted[position] ^= 0xFF
    return bytes(corrupted)


def reference_grayscale(dataset: Dataset, frame: np.ndarray) -> np.ndarray:
    """pydicom's own modality + VOI functions, scaled by the VOI output range."""
    values = apply_modality_lut(frame, dataset)
    if "WindowCenter" in dataset:
        with np.errstate(over="ignore"):  # SIGMOID saturates through exp overflow
            windowed = apply_windowing(values, dataset, index=0)
            # Saturating inputs come out as exactly pydicom's [y_min, y_max].
            y_min, y_max = apply_windowing(np.array([-1e12, 1e12]), dataset, index=0)
        unit = (windowed - y_min) / (y_max - y_min)
    else:
        unit = (values - values.min()) / (values.max() - values.min())
    return 1.0 - unit if dataset.PhotometricInterpretation == "MONOCHROME1" else unit


# --- The corpus ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus() -> dict[str, DecodedImage | ImageRejected]:
    outcomes = {}
    for path in scanner_files():
        try:
            outcomes[path.name] = decode(path.read_bytes())
        except ImageRejected as rejected:
            outcomes[path.name] = rejected
    return outcomes


def test_known_files_resolve():
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "US1_J2KR.dcm", "RG1_UNCR.dcm",
                 "emri_small_jpeg_ls_lossless.dcm", "OBXXXX1A_rle.dcm"):
        assert sample_path(name).is_file()


def test_every_corpus_file_decodes_or_is_refused_as_listed(corpus):
    refused = {name: outcome.reason for name, outcome in corpus.items()
               if isinstance(outcome, ImageRejected)}
    report = "\n".join(f"  {name}: {outcome.reason.value}: {outcome.message}"
                       for name, outcome in sorted(corpus.items())
                       if isinstance(outcome, ImageRejected))
    print(f"\nrefused {len(refused)} of {len(corpus)} corpus files:\n{report}")
    assert refused == {**REJECTED_IMAGES, **NOT_IMAGES}, report
    assert len(corpus) > 140 and len(REJECTED_IMAGES) <= 8


def test_files_listed_as_not_images_really_hold_no_pixel_data():
    for name in NOT_IMAGES:
        try:
            dataset = pydicom.dcmread(sample_path(name), force=True)
        except Exception:
            continue  # not DICOM at all
        assert "PixelData" not in dataset, name


@pytest.mark.parametrize("name", sorted(
    p.name for p in scanner_files() if p.name not in {**REJECTED_IMAGES, **NOT_IMAGES}))
def test_corpus_image_is_display_ready_with_the_header_shape(corpus, name):
    image = corpus[name]
    assert isinstance(image, DecodedImage)
    assert_display_ready(image)
    dataset = pydicom.dcmread(sample_path(name), force=True, stop_before_pixels=True)
    frames = int(dataset.get("NumberOfFrames") or 1)
    color = dataset.PhotometricInterpretation not in ("MONOCHROME1", "MONOCHROME2")
    assert image.pixels.shape == ((dataset.Rows, dataset.Columns, 3) if color
                                  else (dataset.Rows, dataset.Columns))
    assert (image.frame_index, image.frame_count) == (frames // 2, frames)
    assert image.photometric_interpretation == dataset.PhotometricInterpretation
    assert image.modality == (dataset.get("Modality") or None)


# --- Same image, different encodings ------------------------------------------------

LOSSLESS_GROUPS = [
    # Native little/big endian, implicit, RLE, J2K lossless, JPEG-LS lossless, padding.
    ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
     "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
     "MR_small_padded.dcm"],
    # RGB: RLE; big endian; JPEG lossless (process 14); J2K; at 8, 16 and 32 bits.
    ["SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_jpeg_gdcm.dcm",
     "SC_rgb_gdcm_KY.dcm", "SC_rgb_gdcm2k_uncompressed.dcm"],
    ["SC_rgb_16bit.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_expb_16bit.dcm"],
    ["SC_rgb_32bit.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_expb_32bit.dcm"],
    ["SC_rgb_2frame.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_expb_2frame.dcm"],
    ["SC_rgb_16bit_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_expb_16bit_2frame.dcm"],
    ["SC_rgb_32bit_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm", "SC_rgb_expb_32bit_2frame.dcm"],
    ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
     "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"],
    # Scanner images against their J2K-lossless encodings (YBR_RCT for US1).
    ["RG1_UNCR.dcm", "RG1_J2KR.dcm"], ["RG3_UNCR.dcm", "RG3_J2KR.dcm"],
    ["MR2_UNCR.dcm", "MR2_J2KR.dcm"], ["693_UNCR.dcm", "693_J2KR.dcm"],
    ["US1_UNCR.dcm", "US1_J2KR.dcm", "examples_jpeg2k.dcm"],
    # *_UNCI is the decompressed lossy J2K: decoding the J2K must give it exactly.
    ["RG1_UNCI.dcm", "RG1_J2KI.dcm"], ["US1_UNCI.dcm", "US1_J2KI.dcm"],
    ["JPEG2000_UNC.dcm", "JPEG2000.dcm"],
    # Palette color: native, big endian, RLE.
    ["OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"],
    ["OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"],
    ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"],
    ["rtdose.dcm", "rtdose_expb.dcm", "rtdose_rle.dcm"],
    ["liver.dcm", "liver_expb.dcm"], ["liver_1frame.dcm", "liver_expb_1frame.dcm"],
    ["SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"],
    # JPEG baseline against the same stream decoded by dcmtk and stored uncompressed.
    ["SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_dcmtk_ebcys4_dcmd.dcm"],
    ["SC_rgb_jpeg.dcm", "SC_jpeg_no_color_transform.dcm"],
]

# Lossy codecs: mean absolute difference from the original, in [0, 1] units.
# 0.02 is about 5 grey levels of 8 bits; lossy J2K of 693 (a CT shown through a
# 100 HU window, which magnifies codec error 40x) is left out for that reason.
LOSSY_TOLERANCE = 0.02
LOSSY_PAIRS = [
    ("RG1_UNCR.dcm", "RG1_J2KI.dcm"), ("RG3_UNCR.dcm", "RG3_J2KI.dcm"),
    ("MR2_UNCR.dcm", "MR2_J2KI.dcm"), ("US1_UNCR.dcm", "US1_J2KI.dcm"),
    ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm"), ("SC_rgb.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm"),
    ("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"), ("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"),
    ("SC_rgb.dcm", "SC_rgb_jls_lossy_line.dcm"), ("SC_rgb.dcm", "SC_rgb_jls_lossy_sample.dcm"),
    # JPEG baseline decoded by us and by dcmtk: IDCTs differ by a grey level at most.
    ("SC_rgb_dcmtk_ebcyn1_dcmd.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"),
    ("SC_rgb_jpeg_dcmd.dcm", "SC_rgb_jpeg.dcm"),
]


@pytest.mark.parametrize("group", LOSSLESS_GROUPS, ids=lambda group: group[0])
def test_lossless_encodings_decode_to_identical_pixels(corpus, group):
    reference = corpus[group[0]].pixels
    for name in group[1:]:
        np.testing.assert_array_equal(corpus[name].pixels, reference, err_msg=name)


def test_bit_depth_does_not_change_the_picture(corpus):
    """8-, 16- and 32-bit copies of SC_rgb scale to the same [0, 1] values (to float rounding)."""
    for suffix in ("", "_2frame"):
        reference = corpus[f"SC_rgb{suffix}.dcm"].pixels
        for depth in ("16bit", "32bit"):
            np.testing.assert_allclose(corpus[f"SC_rgb_{depth}{suffix}.dcm"].pixels,
                                       reference, atol=1e-6)


@pytest.mark.parametrize("original, lossy", LOSSY_PAIRS, ids=lambda name: name)
def test_lossy_encodings_stay_close_to_the_original(corpus, original, lossy):
    difference = np.abs(corpus[lossy].pixels - corpus[original].pixels)
    assert difference.mean() < LOSSY_TOLERANCE
    assert difference.mean() > 0  # really lossy: the pair is not a lossless one


@pytest.mark.parametrize("name", ["image_dfl.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
                                  "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm"])
def test_decoding_matches_a_native_copy(name):
    """Deflate, JPEG lossless SV1, JPEG-LS near-lossless and 12-bit JPEG against native copies."""
    dataset = read_dataset(name)
    native = read_dataset(name)
    native.PixelData = pixel_array(dataset, raw=True).tobytes()
    native.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(decode(file_bytes(name)).pixels, decode(encode(native)).pixels)


def test_data_set_without_preamble_decodes_like_the_file():
    data = file_bytes("MR_small_implicit.dcm")
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    np.testing.assert_array_equal(decode(data[meta_end:]).pixels, decode(data).pixels)


# --- The display pipeline -----------------------------------------------------------

@pytest.mark.parametrize("name", [
    "MR_small.dcm",              # window, signed
    "693_UNCR.dcm",              # rescale + narrow window
    "MR2_UNCR.dcm",              # non-unit rescale slope + window
    "bad_sequence.dcm",          # two windows: the first is used
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "RG3_UNCR.dcm",              # MONOCHROME1 + window
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "CT_small.dcm",              # rescale, no window: min-max
])
def test_grayscale_matches_pydicoms_modality_and_voi_functions(name):
    dataset = read_dataset(name)
    expected = reference_grayscale(dataset, dataset.pixel_array)
    np.testing.assert_allclose(decode(file_bytes(name)).pixels, expected, atol=1e-5)


@pytest.mark.parametrize("changes", [
    {"WindowCenter": 40, "WindowWidth": 400},
    {"WindowCenter": 40, "WindowWidth": 400, "RescaleSlope": 2, "RescaleIntercept": -3000},
    {"WindowCenter": -40, "WindowWidth": 400, "RescaleSlope": -1, "RescaleIntercept": 0},
    {"WindowCenter": 40, "WindowWidth": 400, "VOILUTFunction": "LINEAR_EXACT"},
    {"WindowCenter": 40, "WindowWidth": 400, "VOILUTFunction": "SIGMOID"},
    {"WindowCenter": 40, "WindowWidth": 1},  # a threshold
], ids=["window", "slope", "negative-slope", "linear-exact", "sigmoid", "width-1"])
def test_rescale_then_window_as_pydicom_does(changes):
    dataset = read_dataset("CT_small.dcm")
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    expected = reference_grayscale(dataset, dataset.pixel_array)
    np.testing.assert_allclose(decode(encode(dataset)).pixels, expected, atol=1e-5)


def test_rescale_intercept_moves_the_window():
    dataset = read_dataset("CT_small.dcm")
    dataset.WindowCenter, dataset.WindowWidth = 40, 400
    with_intercept = decode(encode(dataset)).pixels
    dataset.RescaleIntercept = 0
    without_intercept = decode(encode(dataset)).pixels
    # -1024 HU moves most of this CT below a soft-tissue window.
    assert with_intercept.mean() < without_intercept.mean() - 0.2


def test_negative_slope_without_window_inverts_the_min_max():
    dataset = read_dataset("CT_small.dcm")
    positive = decode(encode(dataset)).pixels
    dataset.RescaleSlope = -1
    np.testing.assert_allclose(decode(encode(dataset)).pixels, 1.0 - positive, atol=1e-6)


def test_modality_lut_sequence_then_min_max():
    dataset = read_dataset("mlut_18.dcm")
    values = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float64)
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(decode(file_bytes("mlut_18.dcm")).pixels, expected, atol=1e-6)


def test_voi_lut_sequence_scaled_by_its_declared_depth():
    dataset = read_dataset("vlut_04.dcm")
    depth = dataset.VOILUTSequence[0].LUTDescriptor[2]
    expected = apply_voi_lut(dataset.pixel_array, dataset) / (2 ** depth - 1)
    np.testing.assert_allclose(decode(file_bytes("vlut_04.dcm")).pixels, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm"])
def test_monochrome1_is_the_inverse_of_the_same_pixels_as_monochrome2(name):
    dataset = read_dataset(name)
    flipped_to = {"MONOCHROME1": "MONOCHROME2", "MONOCHROME2": "MONOCHROME1"}
    original = decode(encode(dataset))
    dataset.PhotometricInterpretation = flipped_to[dataset.PhotometricInterpretation]
    other = decode(encode(dataset))
    np.testing.assert_allclose(other.pixels, 1.0 - original.pixels, atol=1e-6)
    monochrome1 = original if original.photometric_interpretation == "MONOCHROME1" else other
    raw = dataset.pixel_array
    # Larger stored values are darker in MONOCHROME1.
    assert monochrome1.pixels[raw == raw.max()].mean() < monochrome1.pixels[raw == raw.min()].mean()


def test_palette_color_decodes_to_rgb_through_its_table():
    dataset = read_dataset("OBXXXX1A.dcm")
    image = decode(file_bytes("OBXXXX1A.dcm"))
    depth = dataset.RedPaletteColorLookupTableDescriptor[2]
    expected = apply_color_lut(dataset.pixel_array, dataset) / (2 ** depth - 1)
    assert image.pixels.shape == dataset.pixel_array.shape + (3,)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert not np.array_equal(image.pixels[..., 0], image.pixels[..., 2])  # really color


def test_segmented_palette_decodes_to_rgb():
    dataset = read_dataset("gdcm-US-ALOKA-16.dcm")
    expected = apply_color_lut(dataset.pixel_array, dataset) / 65535
    np.testing.assert_allclose(decode(file_bytes("gdcm-US-ALOKA-16.dcm")).pixels, expected,
                               atol=1e-6)


@pytest.mark.parametrize("ybr", ["SC_ybr_full_uncompressed.dcm",
                                 "SC_ybr_full_422_uncompressed.dcm"])
def test_ybr_decodes_to_rgb_close_to_its_rgb_sibling(corpus, ybr):
    difference = np.abs(corpus[ybr].pixels - corpus["SC_rgb.dcm"].pixels)
    # YCbCr rounding: a couple of grey levels; converting twice would be far off.
    assert difference.mean() < 0.005 and difference.max() < 8 / 255


@pytest.mark.parametrize("name, expected_frame", [
    ("SC_rgb_2frame.dcm", 1), ("examples_ybr_color.dcm", 15), ("OBXXXX1A_2frame.dcm", 1),
    ("emri_small.dcm", 5), ("emri_small_jpeg_ls_lossless.dcm", 5), ("rtdose.dcm", 7),
])
def test_multi_frame_decodes_the_central_frame(name, expected_frame):
    dataset = read_dataset(name)
    all_frames = pixel_array(dataset)  # every frame, for comparison
    central = all_frames[expected_frame]
    image = decode(file_bytes(name))
    assert (image.frame_index, image.frame_count) == (expected_frame, len(all_frames))
    if dataset.PhotometricInterpretation == "PALETTE COLOR":
        expected = apply_color_lut(central, dataset) / 65535
    elif central.ndim == 3:
        expected = central / 255
    else:
        expected = (central - central.min()) / (central.max() - central.min())
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    neighbour = decode(encode(_single_frame(dataset, all_frames[expected_frame - 1])))
    assert not np.array_equal(neighbour.pixels, image.pixels)


def _single_frame(dataset: Dataset, frame: np.ndarray) -> Dataset:
    dataset.NumberOfFrames = 1
    dataset.PixelData = frame.astype(frame.dtype.newbyteorder("<")).tobytes()
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    if dataset.PhotometricInterpretation.startswith("YBR"):
        dataset.PhotometricInterpretation = "RGB"  # pixel_array gave RGB
    return dataset


def test_enhanced_multi_frame_uses_its_functional_group_window():
    dataset = read_dataset("eCT_Supplemental.dcm")
    shared = dataset.SharedFunctionalGroupsSequence[0]
    flat = Dataset()
    flat.update(shared.PixelValueTransformationSequence[0])
    flat.update(shared.FrameVOILUTSequence[0])
    flat.BitsStored, flat.PixelRepresentation = dataset.BitsStored, dataset.PixelRepresentation
    flat.PhotometricInterpretation = "MONOCHROME2"
    expected = reference_grayscale(flat, pixel_array(dataset, index=1))
    image = decode(file_bytes("eCT_Supplemental.dcm"))
    assert image.frame_index == 1
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


def test_constant_frame_becomes_zeros():
    dataset = read_dataset("CT_small.dcm")
    dataset.PixelData = np.full((128, 128), 700, dtype=np.int16).tobytes()
    pixels = decode(encode(dataset)).pixels
    assert pixels.shape == (128, 128) and not pixels.any()


def test_header_facts_are_uppercased_and_junk_is_dropped():
    dataset = read_dataset("CT_small.dcm")
    dataset.Modality, dataset.BodyPartExamined = " ct ", "chest"
    image = decode(encode(dataset))
    assert (image.modality, image.body_part_examined) == ("CT", "CHEST")
    dataset.BodyPartExamined = "SKULL; DROP TABLE images"
    del dataset.Modality
    image = decode(encode(dataset))
    assert (image.modality, image.body_part_examined) == (None, None)


# --- PNG and JPEG -------------------------------------------------------------------

def raster(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


GRADIENT = (np.arange(32 * 48).reshape(32, 48) % 256).astype(np.uint8)
COLOR = np.stack([GRADIENT, 255 - GRADIENT, np.full_like(GRADIENT, 90)], axis=-1)


def test_png_grayscale_8_and_16_bit():
    image = decode_image_bytes(raster(GRADIENT), PNG, LIMITS)
    np.testing.assert_allclose(image.pixels, GRADIENT / 255, atol=1e-7)
    assert (image.photometric_interpretation, image.modality) == ("MONOCHROME2", None)
    deep = GRADIENT.astype(np.uint16) * 257 + 3
    np.testing.assert_allclose(decode_image_bytes(raster(deep), PNG, LIMITS).pixels,
                               deep / 65535, atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_png_color_modes_become_rgb(mode):
    data = raster(COLOR, mode)
    image = decode_image_bytes(data, PNG, LIMITS)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) / 255
    assert image.photometric_interpretation == "RGB"
    np.testing.assert_allclose(image.pixels, expected, atol=1e-7)


@pytest.mark.parametrize("mode", ["LA", "1"])
def test_png_gray_modes_stay_gray(mode):
    image = decode_image_bytes(raster(GRADIENT, mode), PNG, LIMITS)
    assert image.pixels.shape == GRADIENT.shape
    assert_display_ready(image)
    if mode == "1":
        assert set(np.unique(image.pixels)) <= {0.0, 1.0}


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_modes(mode):
    image = decode_image_bytes(raster(COLOR, mode, "JPEG"), JPEG, LIMITS)
    assert_display_ready(image)
    assert image.pixels.shape == ((32, 48) if mode == "L" else (32, 48, 3))


def test_content_decides_not_the_declared_type():
    image = decode_image_bytes(raster(GRADIENT), DICOM, LIMITS)
    assert image.photometric_interpretation == "MONOCHROME2"
    dicom = decode_image_bytes(file_bytes("CT_small.dcm"), PNG, LIMITS)
    assert dicom.modality == "CT"


def patched_png_size(width: int, height: int) -> bytes:
    data = bytearray(raster(GRADIENT))
    header = data[16:29]
    header[0:8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[16:29] = header
    data[29:33] = zlib.crc32(b"IHDR" + bytes(header)).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (9000, 9000)])
def test_png_bomb_is_refused_before_decoding(width, height):
    start = time.perf_counter()
    refused = rejection(patched_png_size(width, height), content_type=PNG)
    assert refused.reason == Reason.OVER_SIZE_LIMITS
    assert time.perf_counter() - start < 1.0


def test_png_over_our_pixel_limit_is_refused():
    refused = rejection(raster(GRADIENT), ImageLimits(max_frame_pixels=1000), PNG)
    assert refused.reason == Reason.OVER_SIZE_LIMITS and "48 x 32" in refused.message


def test_truncated_and_garbled_png():
    data = raster(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert rejection(data[: len(data) // 2], content_type=PNG).reason == \
        Reason.UNDECODABLE_PIXEL_DATA
    assert rejection(data[:8] + b"garbage" * 20, content_type=PNG).reason == \
        Reason.NOT_AN_IMAGE


# --- Hostile DICOM ------------------------------------------------------------------

def test_dicom_truncated_in_pixel_data_is_undecodable():
    for name in ("CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm"):
        data = file_bytes(name)
        cut = pixel_data_offset(data) + (len(data) - pixel_data_offset(data)) // 2
        assert rejection(data[:cut]).reason == Reason.UNDECODABLE_PIXEL_DATA, name


def test_dicom_truncated_in_header_is_not_an_image():
    data = file_bytes("CT_small.dcm")
    full = pydicom.dcmread(io.BytesIO(data))
    raw_elements = [full.get_item(tag) for tag in full.keys()]
    element_ends = {raw.value_tell + raw.length for raw in raw_elements
                    if hasattr(raw, "value_tell")}  # undefined-length sequences are parsed
    middle = (pixel_data_offset(data) - 12) // 2
    assert rejection(data[:150]).reason == Reason.NOT_AN_IMAGE  # inside the file meta
    # Every byte of a stretch mid-header: inside element headers and values alike.
    # A cut exactly between two elements leaves a well-formed object without
    # pixel data: nothing in the bytes says it was cut.
    for cut in range(middle, middle + 40):
        expected = Reason.NO_PIXEL_DATA if cut in element_ends else Reason.NOT_AN_IMAGE
        assert rejection(data[:cut]).reason == expected, cut
    assert any(middle <= end < middle + 40 for end in element_ends)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_corrupt_compressed_frame_header_is_undecodable(name):
    data = file_bytes(name)
    refused = rejection(flipped(data, first_fragment_offset(data), 16))
    assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA
    assert "pixel data cannot be decoded" in refused.message


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm"])
def test_corrupt_entropy_coded_data_is_refused_or_stays_in_range(name):
    """Codecs cannot always tell damaged data from pixels; they must never crash or emit NaN."""
    data = file_bytes(name)
    start = first_fragment_offset(data)
    fragment_length = len(data) - start
    for offset in (fragment_length // 4, fragment_length // 2):
        try:
            assert_display_ready(decode(flipped(data, start + offset, 64)))
        except ImageRejected as refused:
            assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA


def test_compressed_frame_claiming_more_pixels_than_the_header_is_refused():
    data = file_bytes("MR_small_jpeg_ls_lossless.dcm")
    start_of_frame = data.index(b"\xff\xf7", first_fragment_offset(data))
    bomb = bytearray(data)
    bomb[start_of_frame + 5:start_of_frame + 9] = (60000).to_bytes(2, "big") * 2
    refused = rejection(bytes(bomb))
    assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA and "60000 x 60000" in refused.message
    data = file_bytes("MR_small_jp2klossless.dcm")
    siz = data.index(b"\xff\x4f\xff\x51")
    bomb = bytearray(data)
    bomb[siz + 8:siz + 16] = (60000).to_bytes(4, "big") * 2
    assert rejection(bytes(bomb)).reason == Reason.UNDECODABLE_PIXEL_DATA


@pytest.mark.parametrize("field, value, expected", [
    ("components", 200, "declares 200 components"),
    ("precision", 24, "declares 24-bit samples"),
])
def test_jpeg_frame_declaring_absurd_components_or_precision_is_refused(field, value, expected):
    data = file_bytes("MR_small_jpeg_ls_lossless.dcm")
    start_of_frame = data.index(b"\xff\xf7", first_fragment_offset(data))
    bomb = bytearray(data)
    bomb[start_of_frame + (9 if field == "components" else 4)] = value
    refused = rejection(bytes(bomb))
    assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA and expected in refused.message


@pytest.mark.parametrize("field, value, expected", [
    ("components", 5000, "declares 5000 components"),
    ("precision", 0x25, "declares 38-bit samples"),
])
def test_jpeg_2000_siz_declaring_absurd_components_or_precision_is_refused(field, value,
                                                                          expected):
    data = file_bytes("MR_small_jp2klossless.dcm")
    siz = data.index(b"\xff\x4f\xff\x51")
    bomb = bytearray(data)
    if field == "components":
        bomb[siz + 40:siz + 42] = value.to_bytes(2, "big")  # Csiz
    else:
        bomb[siz + 42] = value  # Ssiz of the first component
    refused = rejection(bytes(bomb))
    assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA and expected in refused.message


def jp2_wrapped(codestream: bytes, filler_bytes: int) -> bytes:
    """A JP2 file around ``codestream``, with an XML box that pushes the codestream far in."""
    def box(kind: bytes, body: bytes) -> bytes:
        return (8 + len(body)).to_bytes(4, "big") + kind + body
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + box(b"ftyp", b"jp2 " + bytes(4) + b"jp2 ")
            + box(b"xml ", b"<x>" + b" " * filler_bytes + b"</x>") + box(b"jp2c", codestream))


def test_jpeg_2000_size_bomb_behind_large_jp2_boxes_is_refused():
    from pydicom.encaps import encapsulate, generate_frames  # noqa: PLC0415
    dataset = pydicom.dcmread(io.BytesIO(file_bytes("MR_small_jp2klossless.dcm")))
    codestream = bytearray(next(generate_frames(dataset.PixelData, number_of_frames=1)))
    codestream[8:16] = (60000).to_bytes(4, "big") * 2  # SIZ: Xsiz, Ysiz
    dataset.PixelData = encapsulate([jp2_wrapped(bytes(codestream), 8192)])
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    refused = rejection(buffer.getvalue())
    assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA and "60000 x 60000" in refused.message


@pytest.mark.parametrize("rows, columns, frames, limit", [
    (65535, 65535, 1, "max_frame_pixels"),
    (512, 512, 100_000, "max_frames"),
    (4096, 4096, 100, "max_total_samples"),
])
def test_size_bomb_is_refused_before_any_allocation(rows, columns, frames, limit):
    dataset = read_dataset("MR_small.dcm")  # 8 KiB of real pixel data
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = rows, columns, frames
    data = encode(dataset)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        refused = rejection(data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.reason == Reason.OVER_SIZE_LIMITS and limit in refused.message
    assert elapsed < 1.0 and peak < 8 * 1024 * 1024


def test_deflate_bomb_is_refused():
    data = file_bytes("image_dfl.dcm")  # 4.6 KB inflating to 260 KB
    refused = rejection(data, ImageLimits(max_file_bytes=100_000))
    assert refused.reason == Reason.OVER_SIZE_LIMITS and "inflates" in refused.message
    assert_display_ready(decode(data, ImageLimits(max_file_bytes=300_000)))


@pytest.mark.parametrize("name", ["test-SR.dcm", "reportsi.dcm", "waveform_ecg.dcm"])
def test_structured_reports_and_waveforms_have_no_pixel_data(name):
    assert rejection(file_bytes(name)).reason == Reason.NO_PIXEL_DATA


def test_float_pixel_data_is_refused_as_no_pixel_data():
    dataset = read_dataset("CT_small.dcm")
    del dataset.PixelData
    dataset.FloatPixelData = np.zeros((128, 128), dtype=np.float32).tobytes()
    assert rejection(encode(dataset)).reason == Reason.NO_PIXEL_DATA


def test_unsupported_photometric_is_undecodable():
    dataset = read_dataset("SC_rgb.dcm")
    dataset.PhotometricInterpretation = "YBR_PARTIAL_420"
    refused = rejection(encode(dataset))
    assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA and "YBR_PARTIAL_420" in refused.message


@pytest.mark.parametrize("data", [
    b"Patient report\nNothing to see here.\n" * 50,
    np.random.default_rng(7).bytes(4096),
    b"\x08\x00" + np.random.default_rng(8).bytes(4094),  # looks like a bare data set
    b"",
], ids=["text", "random", "random-group-0008", "empty"])
def test_non_images_are_not_an_image(data):
    assert rejection(data).reason == Reason.NOT_AN_IMAGE


def test_file_over_the_byte_limit():
    data = file_bytes("CT_small.dcm")
    assert rejection(data, ImageLimits(max_file_bytes=len(data) - 1)).reason == \
        Reason.FILE_TOO_LARGE


# --- Patient identity never leaks ---------------------------------------------------

def with_canaries(name: str) -> Dataset:
    dataset = read_dataset(name)
    for keyword, value in CANARIES.items():
        setattr(dataset, keyword, value)
    return dataset


def assert_no_canary(text: str) -> None:
    for value in CANARIES.values():
        for part in value.replace("^", " ").split():
            assert part not in text, f"{part!r} leaked"
    assert CANARIES["PatientID"][:8] not in text


def test_rejections_and_logs_carry_no_patient_identity(caplog):
    caplog.set_level(logging.DEBUG, logger="streaming")
    native = with_canaries("CT_small.dcm")
    native.PixelData = native.PixelData[:-100]
    compressed = encode(with_canaries("MR_small_jpeg_ls_lossless.dcm"))
    photometric = with_canaries("CT_small.dcm")
    photometric.PhotometricInterpretation = CANARIES["PatientID"]
    frames = with_canaries("CT_small.dcm")
    frames.NumberOfFrames = "77777777"
    # An IS that is not a number: pydicom's own warning repeats it.
    bad_frames = encode(frames).replace(b"77777777", CANARIES["PatientID"][:8].encode())
    corrupt = [encode(native), flipped(compressed, first_fragment_offset(compressed), 16),
               encode(photometric), bad_frames]
    for data in corrupt:
        refused = rejection(data)
        assert refused.reason == Reason.UNDECODABLE_PIXEL_DATA
        assert_no_canary(refused.message)
        assert_no_canary(str(refused))
        # Library exceptions (whose text may echo values) are not chained on.
        assert refused.__cause__ is None
        assert refused.__context__ is None or refused.__suppress_context__
    ours = [record for record in caplog.records if record.name.startswith("streaming")]
    assert ours, "expected debug records from the decoder"
    assert_no_canary(" ".join(record.getMessage() for record in ours))


def test_decoded_image_carries_no_patient_identity():
    image = decode(encode(with_canaries("CT_small.dcm")))
    assert_no_canary(repr(image))
    assert_no_canary(" ".join(str(getattr(image, field)) for field in vars(image)))
    assert set(vars(image)) == {"pixels", "photometric_interpretation", "modality",
                                "body_part_examined", "frame_index", "frame_count"}


# --- Where images may be read from --------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    (root / "ct.dcm").write_bytes(file_bytes("CT_small.dcm"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.dcm").write_bytes(file_bytes("MR_small.dcm"))
    return root


def policy_for(*roots) -> AccessPolicy:
    return AccessPolicy(allowed_roots=tuple(str(root) for root in roots))


def refusal(uri: str, policy: AccessPolicy, max_bytes: int = 10_000_000) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        open_image_bytes(uri, policy, max_bytes)
    return caught.value


def test_allowed_local_file_reads_by_path_and_file_uri(store):
    expected = file_bytes("CT_small.dcm")
    path = store / "ct.dcm"
    assert open_image_bytes(str(path), policy_for(store), 10_000_000) == expected
    assert open_image_bytes(path.as_uri(), policy_for(store), 10_000_000) == expected
    assert open_image_bytes(f"file://localhost{path}", policy_for(store), 10_000_000) == expected


@pytest.mark.parametrize("uri_of", [
    lambda root: str(root.parent / "outside" / "secret.dcm"),
    lambda root: f"{root}/../outside/secret.dcm",
    lambda root: "store/ct.dcm",
    lambda root: "file://otherhost" + str(root / "ct.dcm"),
    lambda root: "http://example.org/ct.dcm",
    lambda root: "ftp://example.org/ct.dcm",
    lambda root: "data:application/dicom;base64,AAAA",
    lambda root: "gs://not-allowed-bucket/x.dcm",
    lambda root: "gs://bucket/dicom/../secret/x.dcm",
    lambda root: "gs://bucket/dicom2/x.dcm",
], ids=["outside", "dotdot", "relative", "other-host", "http", "ftp", "data",
        "other-bucket", "remote-dotdot", "prefix-sibling"])
def test_uris_outside_the_policy_are_not_allowed(store, uri_of):
    policy = AccessPolicy(allowed_roots=(str(store), "gs://bucket/dicom"))
    refused = refusal(uri_of(store), policy)
    assert refused.reason == Reason.URI_NOT_ALLOWED
    assert "secret" not in refused.message and "otherhost" not in refused.message


def test_symlink_out_of_a_root_is_not_allowed(store):
    (store / "link.dcm").symlink_to(store.parent / "outside" / "secret.dcm")
    assert refusal(str(store / "link.dcm"), policy_for(store)).reason == Reason.URI_NOT_ALLOWED


def test_no_symlink_below_a_root_is_followed(store):
    """Not even one that stays inside the root: a link can be swapped between a check and
    the open, so the walk from the root never follows one (O_NOFOLLOW at every step)."""
    (store / "alias.dcm").symlink_to(store / "ct.dcm")
    (store / "series").mkdir()
    (store / "series" / "ct.dcm").write_bytes(file_bytes("CT_small.dcm"))
    (store / "linked-series").symlink_to(store / "series")
    for path in (store / "alias.dcm", store / "linked-series" / "ct.dcm"):
        refused = refusal(str(path), policy_for(store))
        assert refused.reason == Reason.URI_NOT_ALLOWED and "symlink" in refused.message
    assert open_image_bytes(str(store / "series" / "ct.dcm"), policy_for(store),
                            10_000_000) == file_bytes("CT_small.dcm")


def test_a_root_that_is_itself_a_symlink_is_the_operators_choice(store, tmp_path):
    (tmp_path / "export").symlink_to(store)
    assert open_image_bytes(str(tmp_path / "export" / "ct.dcm"),
                            policy_for(tmp_path / "export"), 10_000_000) == \
        file_bytes("CT_small.dcm")


def test_hard_linked_files_are_refused_only_when_asked(store):
    os.link(store / "ct.dcm", store / "second-name.dcm")
    path = str(store / "second-name.dcm")
    assert open_image_bytes(path, policy_for(store), 10_000_000) == file_bytes("CT_small.dcm")
    strict = AccessPolicy(allowed_roots=(str(store),), refuse_hard_links=True)
    refused = refusal(path, strict)
    assert refused.reason == Reason.URI_NOT_ALLOWED and "hard links" in refused.message


@pytest.mark.parametrize("uri", ["/proc/self/environ", "/dev/zero", "/sys/kernel/notes"])
def test_system_trees_are_never_read_even_under_a_root(uri):
    refused = refusal(uri, policy_for("/"))
    assert refused.reason == Reason.URI_NOT_ALLOWED and "system folders" in refused.message


def test_symlink_to_proc_is_not_allowed(store):
    (store / "env.dcm").symlink_to("/proc/self/environ")
    assert refusal(str(store / "env.dcm"), policy_for(store, "/")).reason == \
        Reason.URI_NOT_ALLOWED


def test_fifo_is_refused_without_blocking(store):
    fifo = store / "pipe.dcm"
    os.mkfifo(fifo)
    outcome = {}

    def read():
        try:
            open_image_bytes(str(fifo), policy_for(store), 10_000_000)
        except ImageRejected as refused:
            outcome["reason"] = refused.reason

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert outcome["reason"] == Reason.UNREADABLE_URI


@pytest.mark.parametrize("name", ["missing.dcm", "."], ids=["missing", "directory"])
def test_missing_file_or_folder_is_unreadable(store, name):
    assert refusal(str(store / name), policy_for(store)).reason == Reason.UNREADABLE_URI


def test_local_file_over_the_limit_is_too_large(store):
    refused = refusal(str(store / "ct.dcm"), policy_for(store), max_bytes=1000)
    assert refused.reason == Reason.FILE_TOO_LARGE


def test_local_files_need_the_file_scheme(store):
    policy = AccessPolicy(allowed_roots=(str(store), "gs://bucket/"), allowed_schemes=())
    assert refusal(str(store / "ct.dcm"), policy).reason == Reason.URI_NOT_ALLOWED


class RemoteStandIn(LocalFileSystem):
    """A remote scheme served from a local folder: the cloud store that is not here.

    Beam finds filesystems by subclass and scheme, so ``open_image_bytes`` reaches
    this through the real ``FileSystems`` API, as it would reach GCS.
    """
    folder: Path | None = None
    understated_size: int | None = None  # a store whose metadata lags the object

    @classmethod
    def scheme(cls):
        return "medimgtest"

    def _local(self, uri: str) -> str:
        return str(self.folder / uri.split("://", 1)[1])

    def metadata(self, path):
        metadata = super().metadata(self._local(path))
        if self.understated_size is not None:
            metadata.size_in_bytes = self.understated_size
        return metadata

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)


@pytest.fixture
def remote(store):
    RemoteStandIn.folder, RemoteStandIn.understated_size = store.parent, None
    yield AccessPolicy(allowed_roots=("medimgtest://store/",), allowed_schemes=())
    RemoteStandIn.folder = RemoteStandIn.understated_size = None


def test_remote_uri_under_an_allowed_prefix_reads_through_beam(remote):
    assert open_image_bytes("medimgtest://store/ct.dcm", remote, 10_000_000) == \
        file_bytes("CT_small.dcm")
    assert refusal("medimgtest://outside/secret.dcm", remote).reason == Reason.URI_NOT_ALLOWED


def test_remote_size_is_checked_from_metadata_and_while_reading(remote):
    assert refusal("medimgtest://store/ct.dcm", remote, 1000).reason == Reason.FILE_TOO_LARGE
    RemoteStandIn.understated_size = 10  # metadata says small; the read cap still holds
    assert refusal("medimgtest://store/ct.dcm", remote, 1000).reason == Reason.FILE_TOO_LARGE


def test_remote_object_missing_is_unreadable(remote):
    refused = refusal("medimgtest://store/missing.dcm", remote)
    assert refused.reason == Reason.UNREADABLE_URI and "missing" not in refused.message


# --- load_image: access, digest, decoding together ----------------------------------

def test_load_image_with_matching_digest(store):
    digest = hashlib.sha256(file_bytes("CT_small.dcm")).hexdigest()
    image = load_image(str(store / "ct.dcm"), DICOM, policy=policy_for(store), limits=LIMITS,
                       expected_sha256=digest.upper())
    assert image.modality == "CT" and image.pixels.shape == (128, 128)


def test_load_image_with_wrong_digest(store):
    with pytest.raises(ImageRejected) as caught:
        load_image(str(store / "ct.dcm"), DICOM, policy=policy_for(store), limits=LIMITS,
                   expected_sha256="0" * 64)
    assert caught.value.reason == Reason.CHECKSUM_MISMATCH


def test_load_image_enforces_the_byte_limit(store):
    with pytest.raises(ImageRejected) as caught:
        load_image(str(store / "ct.dcm"), DICOM, policy=policy_for(store),
                   limits=ImageLimits(max_file_bytes=1000))
    assert caught.value.reason == Reason.FILE_TOO_LARGE

"""The synthetic DICOM studies: valid files, known truth, the same display whatever the encoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from streaming.local import phantoms
from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.types import ImageLimits

LIMITS = ImageLimits()
# Every encoding offered here is lossless.
ENCODINGS = phantoms.encodable_transfer_syntaxes()


@pytest.fixture(scope="module")
def study_set(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("phantom_studies")
    return out_dir, phantoms.generate_study_set(out_dir, n_studies=16, seed=7, size=64)


def _decode(data: bytes):
    return decode_image_bytes(data, phantoms.DICOM_CONTENT_TYPE, LIMITS)


def _write(pixels, **options) -> bytes:
    buffer = io.BytesIO()
    defaults = dict(modality="DX", study_uid="2.25.1", series_uid="2.25.2", sop_uid="2.25.3")
    phantoms.write_dicom(buffer, pixels, **{**defaults, **options})
    return buffer.getvalue()


def test_the_usual_lossless_encodings_can_be_written_here():
    available = phantoms.encodable_transfer_syntaxes()
    assert {"explicit_le", "implicit_le", "deflate", "rle", "jpeg2000_lossless"} <= set(available)
    assert "jpeg_lossless" not in available  # pydicom has no JPEG Lossless encoder


def test_every_generated_file_decodes_with_the_serving_decoder(study_set):
    _, cases = study_set
    for case in cases:
        decoded = _decode(case.path.read_bytes())
        assert decoded.pixels.shape == (64, 64)
        assert decoded.pixels.dtype == np.float32
        assert 0.0 <= decoded.pixels.min() and decoded.pixels.max() <= 1.0
        assert decoded.modality == case.modality
        assert decoded.body_part_examined == "CHEST"
        assert decoded.photometric_interpretation == case.photometric


def test_manifest_matches_the_files(study_set):
    out_dir, cases = study_set
    manifest = json.loads((out_dir / phantoms.MANIFEST_FILE).read_text())
    assert manifest["classes"] == ["normal", "lesion"]
    assert phantoms.read_manifest(out_dir) == cases
    assert sorted(out_dir.rglob("*.dcm")) == sorted(case.path for case in cases)
    for case in cases:
        header = pydicom.dcmread(case.path, stop_before_pixels=True)
        assert header.StudyInstanceUID == case.study_instance_uid
        assert header.SeriesInstanceUID == case.series_instance_uid
        assert header.SOPInstanceUID == case.sop_instance_uid
        assert header.file_meta.MediaStorageSOPInstanceUID == case.sop_instance_uid
        assert header.Modality == case.modality
        assert header.SOPClassUID == phantoms.SOP_CLASSES[case.modality]
        assert header.PhotometricInterpretation == case.photometric
        assert header.file_meta.TransferSyntaxUID == phantoms.TRANSFER_SYNTAXES[
            case.transfer_syntax]
        assert "PHANTOM" in str(header.PatientName)


def test_study_set_covers_labels_modalities_and_encodings(study_set):
    _, cases = study_set
    chest = [case for case in cases if case.modality in ("CR", "DX")]
    ct = [case for case in cases if case.modality == "CT"]
    assert ct and all(case.expected_label is None for case in ct)
    assert {case.expected_label for case in chest} == {"normal", "lesion"}
    assert {case.photometric for case in chest} == {"MONOCHROME1", "MONOCHROME2"}
    assert {case.transfer_syntax for case in cases} == set(phantoms.encodable_transfer_syntaxes())
    assert len({case.study_instance_uid for case in cases}) == 16
    assert len({case.sop_instance_uid for case in cases}) == len(cases)
    assert len(cases) > 16  # some studies hold several images


def test_the_same_seed_writes_the_same_files(tmp_path):
    first = phantoms.generate_study_set(tmp_path / "a", n_studies=5, seed=11, size=32)
    second = phantoms.generate_study_set(tmp_path / "b", n_studies=5, seed=11, size=32)
    other = phantoms.generate_study_set(tmp_path / "c", n_studies=5, seed=12, size=32)
    for one, two in zip(first, second):
        assert one.path.read_bytes() == two.path.read_bytes()
    assert ((tmp_path / "a" / phantoms.MANIFEST_FILE).read_text()
            == (tmp_path / "b" / phantoms.MANIFEST_FILE).read_text())
    assert first[0].path.read_bytes() != other[0].path.read_bytes()


def test_lossless_encodings_decode_to_identical_pixels():
    pixels = phantoms.render_chest_phantom(np.random.default_rng(1), 64, lesion=True)
    decoded = {name: _decode(_write(pixels, transfer_syntax=name)).pixels for name in ENCODINGS}
    reference = decoded["explicit_le"]
    for name, image in decoded.items():
        np.testing.assert_array_equal(image, reference, err_msg=name)
    # The default window maps the 12-bit stored values back onto the rendered ones.
    np.testing.assert_allclose(reference, pixels, atol=0.5 / 4095 + 1e-6)


@pytest.mark.parametrize("transfer_syntax", ["explicit_le", "rle", "jpeg2000_lossless"])
def test_monochrome1_and_monochrome2_show_the_same_image(transfer_syntax):
    pixels = phantoms.render_chest_phantom(np.random.default_rng(2), 64, lesion=False)
    as_m1 = _write(pixels, transfer_syntax=transfer_syntax, photometric="MONOCHROME1")
    as_m2 = _write(pixels, transfer_syntax=transfer_syntax, photometric="MONOCHROME2")
    stored_m1 = pydicom.dcmread(io.BytesIO(as_m1)).pixel_array
    stored_m2 = pydicom.dcmread(io.BytesIO(as_m2)).pixel_array
    np.testing.assert_array_equal(stored_m1, 4095 - stored_m2)  # really stored inverted
    np.testing.assert_allclose(_decode(as_m1).pixels, _decode(as_m2).pixels, atol=1e-6)


def test_ct_phantom_is_stored_in_hounsfield_units():
    hu = phantoms.render_ct_phantom(np.random.default_rng(3), 64)
    assert hu.min() >= -1024 and hu.max() > 500  # air and bone
    dataset = pydicom.dcmread(io.BytesIO(_write(hu, modality="CT", transfer_syntax="rle")))
    assert dataset.SOPClassUID == pydicom.uid.CTImageStorage
    np.testing.assert_allclose(apply_modality_lut(dataset.pixel_array, dataset), hu, atol=0.5)
    assert (float(dataset.WindowCenter), float(dataset.WindowWidth)) == (40.0, 400.0)


def test_write_dicom_refuses_what_it_cannot_write():
    pixels = np.zeros((8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="explicit_le"):
        _write(pixels, transfer_syntax="jpeg_lossless")
    with pytest.raises(ValueError, match="modality"):
        _write(pixels, modality="MR")
    with pytest.raises(ValueError, match="MONOCHROME2"):
        _write(pixels, modality="CT", photometric="MONOCHROME1")


def test_phantom_training_set_is_balanced_decoded_and_deterministic():
    pixels, labels = phantoms.phantom_training_set(40, size=48, seed=5)
    assert pixels.shape == (40, 48, 48) and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert labels.dtype == np.int64 and labels.sum() == 20
    again, again_labels = phantoms.phantom_training_set(40, size=48, seed=5)
    np.testing.assert_array_equal(pixels, again)
    np.testing.assert_array_equal(labels, again_labels)


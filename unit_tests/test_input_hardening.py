"""Inputs the hostile-input campaign found mishandled, each pinned down as a regression test.

- A record without a value (a Kafka tombstone) crashed ParseEvents, and with it the job.
- A valid RFC 3339 ``sent_at`` in lower case ('t', 'z') crashed BuildFindings.
- A DICOM file cut inside its header was called ``no_pixel_data`` (as if it were a
  report) when the element before the cut had been converted by pydicom while
  reading: Specific Character Set, an empty value, a sequence.
"""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.contracts import validation

from streaming.job import pipeline
from streaming.local.reference_data import scanner_files
from streaming.contracts.events import EventRejected, new_event, parse_event, rfc3339_epoch
from streaming.job.findings import build_finding
from streaming.imaging.decoding import DICOM, decode_image_bytes
from streaming.imaging.types import ImageLimits, ImageRejected
from streaming.modeling.scoring import Scoring
from streaming.job.options import job_settings
from streaming.contracts.reasons import Reason
from streaming.contracts.records import KafkaRecord, SourcePosition


def test_a_tombstone_is_an_invalid_json_dead_letter_not_a_crash(tmp_path):
    with pytest.raises(EventRejected) as rejected:
        parse_event(None)
    assert rejected.value.reason == Reason.INVALID_JSON
    settings = job_settings(PipelineOptions(["--model_registry", str(tmp_path),
                                             "--allowed_roots", str(tmp_path)]))
    record = KafkaRecord(SourcePosition("image-events", 0, 5), b"key", None, 0, 0.0)
    (output,) = list(pipeline.ParseEvents(settings).process(record))
    document = json.loads(output.value.value)
    assert validation.errors(validation.DEAD_LETTER, document, strict=True) == []
    assert document["reason"] == "invalid_json" and "tombstone" in document["message"]
    assert document["payload"]["size_bytes"] == 0


@pytest.mark.parametrize("sent_at", ["2026-11-26t10:00:00.5z", "2026-11-26T10:00:00.5z",
                                     "2026-11-26t11:00:00.5+01:00"])
def test_lower_case_rfc3339_times_are_read_and_scored(sent_at):
    assert rfc3339_epoch(sent_at) == rfc3339_epoch("2026-11-26T10:00:00.5Z")
    document = new_event(study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                         sop_instance_uid="1.2.3.4.5", modality="CR", uri="/x.dcm",
                         content_type="application/dicom", sender="UNIT").to_document()
    event = parse_event(json.dumps({**document, "sent_at": sent_at}).encode())
    record = KafkaRecord(SourcePosition("image-events", 0, 1), None, b"", 0, 0.0)
    scoring = Scoring(status=Scoring.NOT_APPLICABLE, model_name="m", model_version="1",
                      not_applicable_reason="modality")
    finding = build_finding(event, record, scoring, emitted_at=rfc3339_epoch(sent_at) + 2)
    assert finding["latency_ms"] == 2000.0


def scanner_file(name: str) -> bytes:
    return next(p for p in scanner_files() if p.name == name).read_bytes()


def reason_for(data: bytes) -> Reason:
    with pytest.raises(ImageRejected) as rejected:
        decode_image_bytes(data, DICOM, ImageLimits())
    return rejected.value.reason


def element_start(data: bytes, tag: int) -> int:
    """Where a top-level element with a short explicit-VR header starts."""
    raw = pydicom.dcmread(io.BytesIO(data)).get_item(tag, keep_deferred=True)
    return raw.value_tell - 8


@pytest.mark.parametrize("name, before, cut_in", [
    ("CT_small.dcm", "Specific Character Set", 0x00080008),  # cut in the element after it
    ("MR_small.dcm", "an empty value (0010,1020)", 0x00101030),
    ("US1_J2KI.dcm", "a sequence (0008,9215)", 0x00100010),
])
def test_a_header_cut_after_an_element_pydicom_converts_is_not_an_image(name, before, cut_in):
    data = scanner_file(name)
    start = element_start(data, cut_in)
    for into in (2, 7, 10):  # inside the tag, the length, the value
        assert reason_for(data[:start + into]) == Reason.NOT_AN_IMAGE, (before, into)


def test_a_header_cut_between_elements_still_reads_as_an_object_without_pixels():
    data = scanner_file("CT_small.dcm")
    assert reason_for(data[:element_start(data, 0x00080008)]) == Reason.NO_PIXEL_DATA

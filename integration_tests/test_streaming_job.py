"""The real job on a real broker: real scanner files and broken events, one outcome each."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from scenarios.delivery import JOB_START_S
from streaming.contracts import validation
from streaming.local import phantoms
from streaming.local.reference_data import ScannerFilesMissing, scanner_files
from streaming.contracts.events import new_event
from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.types import ImageLimits, ImageRejected
from streaming.tools.modality import event_for_file, publish_events, publish_raw
from streaming.kafka.outcomes import OutcomeLog
from integration_tests.conftest import STUDY_IMAGE_SIZE
from scenarios import bad_files

SENDER = "TEST_PACS"


def real_files() -> list[Path]:
    try:
        return scanner_files()
    except ScannerFilesMissing as missing:
        pytest.skip(str(missing))


def expected_outcome(path: Path) -> str:
    """What our decoder makes of the file in this process: 'image' or a reason code."""
    try:
        decode_image_bytes(path.read_bytes(), "application/dicom", ImageLimits())
    except ImageRejected as rejected:
        return rejected.reason.value
    return "image"


def broken_events(tmp_path: Path, good: Path) -> list[tuple[bytes, str]]:
    """(payload, expected reason) for each kind of bad input a sender can produce."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    secret = outside / "private.dcm"
    secret.write_bytes(good.read_bytes())
    link = tmp_path / "link.dcm"
    link.symlink_to(secret)
    text = tmp_path / "report.dcm"
    text.write_text("not an image at all\n")
    corrupt = tmp_path / "corrupt.dcm"  # the JPEG-LS frame's headers garbled
    corrupt.write_bytes(bad_files.garbled_codestream(good.read_bytes(), "headers_to_fill"))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(bad_files.truncated(good.read_bytes(), 300))
    uids = dict(study_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
                sop_instance_uid=generate_uid())

    def event(uri: str, **extra) -> bytes:
        return new_event(**uids, modality="CR", uri=uri, content_type="application/dicom",
                         sender=SENDER, **extra).to_json()

    def altered(**changes) -> bytes:
        return json.dumps({**json.loads(event(str(good))), **changes}).encode()

    return [
        (b"\x00\x01 not json", "invalid_json"),
        (altered(priority="whenever"), "schema_violation"),
        (altered(patient_name="CANARY^PATIENT"), "schema_violation"),
        (altered(schema_version=9), "unsupported_schema_version"),
        (event(str(good)) + b" " * 70_000, "payload_too_large"),
        (event("/etc/passwd"), "uri_not_allowed"),
        (event("/proc/self/environ"), "uri_not_allowed"),
        (event(str(tmp_path / ".." / outside.name / "private.dcm")), "uri_not_allowed"),
        (event(str(link)), "uri_not_allowed"),
        (event("http://pacs.example.org/wado?study=1"), "uri_not_allowed"),
        (event(str(tmp_path / "gone.dcm")), "unreadable_uri"),
        (event(str(good), sha256="0" * 64), "checksum_mismatch"),
        (event(str(text)), "not_an_image"),
        (event(str(truncated)), "not_an_image"),
        (event(str(bad_files.structured_report(tmp_path / "sr.dcm"))), "no_pixel_data"),
        (event(str(bad_files.pixel_bomb(tmp_path / "bomb.dcm", rows=65535, columns=65535,
                                        frames=1000))), "over_size_limits"),
        (event(str(corrupt)), "undecodable_pixel_data"),
    ]


@pytest.mark.slow
def test_scanner_files_and_broken_events_each_get_exactly_one_outcome(
        kafka, topics, start_job, tmp_path):
    files = real_files()
    expected = {path: expected_outcome(path) for path in files}
    cases = phantoms.generate_study_set(tmp_path / "studies", 6, seed=9, size=STUDY_IMAGE_SIZE)
    jpeg_ls = next(c.path for c in cases if c.transfer_syntax == "jpeg_ls_lossless")
    broken = broken_events(tmp_path, jpeg_ls)
    assert expected_outcome(Path(jpeg_ls)) == "image"

    job = start_job(allowed_roots=sorted({str(p.parent) for p in files}))  # creates the topics
    events = [bad_files.announce(path, SENDER) for path in files]
    scanner_events = {event.event_id: path for event, path in zip(events, files)}
    phantom = [event_for_file(c.path, sender=SENDER) for c in cases]
    phantom_events = {event.event_id: case for event, case in zip(phantom, cases)}
    wanted = list(scanner_events) + list(phantom_events)
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, phantom[:1])
        assert log.wait_for_count(1, JOB_START_S), job.log_tail()  # the job is up
        publish_raw(kafka, topics.events, [payload for payload, _ in broken], key=b"broken")
        publish_events(kafka, topics.events, events + phantom[1:])
        assert log.wait_for(wanted, 300, extra_dead_letters=1), job.log_tail()
        log.drain(quiet_s=3)
        assert job.running(), "bad input must never stop the job"
        assert job.stop() == 0

    # One event, one outcome; every record valid against its schema.
    assert log.duplicates() == {} and log.undecodable == 0
    assert len(log.outcomes) == len(broken) + len(wanted)
    for outcome in log.outcomes:
        schema = validation.FINDING if outcome.kind == "finding" else validation.DEAD_LETTER
        assert validation.errors(schema, outcome.document, strict=True) == [], outcome.document

    # Broken events: each dead-lettered with its reason.
    broken_reasons = sorted(o.document["reason"] for o in log.outcomes
                            if o.kind == "dead_letter" and o.event_id not in scanner_events
                            and o.event_id not in phantom_events)
    assert broken_reasons == sorted(reason for _, reason in broken)

    # Scanner files: what decodes here is a finding there, what does not is its dead letter.
    for event_id, path in scanner_events.items():
        (outcome,) = log.by_event[event_id]
        if expected[path] == "image":
            assert outcome.kind == "finding", (path.name, outcome.document)
            modality = outcome.document["modality"]
            if modality not in ("CR", "DX"):
                assert outcome.document["status"] == "not_applicable", path.name
        else:
            assert outcome.kind == "dead_letter", path.name
            assert outcome.document["reason"] == expected[path], path.name

    # Phantoms: the chest model scores chest X-rays and leaves CT alone.
    for event_id, case in phantom_events.items():
        (outcome,) = log.by_event[event_id]
        status = outcome.document["status"]
        assert status == ("not_applicable" if case.expected_label is None else "scored")

    # No patient identity from the scanner files reaches any output.
    identities = set()
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable headers carry nothing to leak
            continue
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(header.get(keyword, "") or "").strip()
            if len(value) >= 6 and not value.isdigit():
                identities.add(value)
    outputs = json.dumps([o.document for o in log.outcomes])
    leaked = sorted(v for v in identities if v in outputs)
    assert not leaked, leaked

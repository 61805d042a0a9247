"""The gateway's parts without a network: identities, durable storage, configuration,
the STOW-RS body parser and the series-complete notice contract."""

from __future__ import annotations

import io
import socket
import time
import warnings

import pydicom
import pytest

from streaming.contracts import validation
from streaming.contracts.events import new_event
from streaming.gateway import stow
from streaming.gateway.announcing import Announcer
from streaming.gateway.config import GatewayConfigError, parse_callers
from streaming.gateway.dimse import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, status_for
from streaming.gateway.intake import Intake, Refusal, event_id_for
from streaming.gateway.series import _OpenSeries, notice_for
from streaming.gateway.storage import InstanceStore, InstanceTooLarge
from streaming.kafka.config import KafkaConfig

SOP = "1.2.826.0.1.3680043.8.498.1"
SHA = "a" * 64


def test_a_resent_instance_keeps_its_event_id_and_other_bytes_get_another():
    assert event_id_for(SOP, SHA) == event_id_for(SOP, SHA)
    assert event_id_for(SOP, SHA) != event_id_for(SOP, "b" * 64)  # e.g. transcoded by a PACS
    assert event_id_for(SOP, SHA) != event_id_for(SOP + ".1", SHA)


def test_instances_are_stored_once_by_content_and_never_half(tmp_path):
    store = InstanceStore(str(tmp_path), max_bytes=1000)
    first = store.store(io.BytesIO(b"x" * 600))
    again = store.store(io.BytesIO(b"x" * 600))
    assert first.uri == again.uri and first.sha256 == again.sha256
    assert (first.newly_written, again.newly_written) == (True, False)
    assert open(first.uri, "rb").read() == b"x" * 600
    with pytest.raises(InstanceTooLarge):
        store.store(io.BytesIO(b"y" * 1001))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{first.sha256}.dcm"]


def test_a_crashed_gateways_partial_files_are_removed_at_start(tmp_path):
    import os  # noqa: PLC0415

    stale, fresh = tmp_path / ".incoming-stale", tmp_path / ".incoming-fresh"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    InstanceStore(str(tmp_path), max_bytes=1000)
    assert (stale.exists(), fresh.exists()) == (False, True)


def test_allowed_callers_come_from_configuration():
    callers = parse_callers("CR_ROOM_3, PACS@10.0.0.5,PACS@10.0.0.6")
    assert callers["CR_ROOM_3"].admits("192.168.1.9")
    assert callers["PACS"].admits("10.0.0.6") and not callers["PACS"].admits("10.0.0.7")
    for bad in ("", "A_TITLE_LONGER_THAN_16", "PACS@not-an-address"):
        with pytest.raises(GatewayConfigError):
            parse_callers(bad)


def test_refusals_map_to_dicom_statuses():
    assert status_for(Refusal("broker_unavailable", "", retry=True)) == OUT_OF_RESOURCES
    assert status_for(Refusal("too_large", "", retry=False)) == OUT_OF_RESOURCES
    assert status_for(Refusal("missing_uids", "", retry=False)) == CANNOT_UNDERSTAND


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_a_broker_the_instance_is_refused_for_a_retry(tmp_path):
    source = pydicom.data.get_testdata_file("CT_small.dcm")
    announcer = Announcer(KafkaConfig(f"127.0.0.1:{_closed_port()}"), timeout_s=1.0)
    intake = Intake(InstanceStore(str(tmp_path), 10**7), announcer, "image-events")
    started = time.monotonic()
    with open(source, "rb") as handle, pytest.raises(Refusal) as refused:
        intake.accept(handle, sender="CT_ROOM_1", protocol="dimse")
    assert refused.value.reason == "broker_unavailable" and refused.value.retry
    assert time.monotonic() - started < 30, "the sender must hear before its DIMSE timeout"
    announcer.close()


def _dicom_bytes(**changes) -> bytes:
    dataset = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs we want
        for keyword, value in changes.items():
            setattr(dataset, keyword, value)
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("payload, reason", [
    (b"not a DICOM file" * 20, "unreadable_header"),
    (_dicom_bytes(SOPInstanceUID=""), "missing_uids"),
    (_dicom_bytes(StudyInstanceUID="1.2.abc"), "invalid_header"),
])
def test_what_cannot_be_announced_is_refused_for_good_and_not_stored(tmp_path, payload,
                                                                    reason):
    announcer = Announcer(KafkaConfig(f"127.0.0.1:{_closed_port()}"), timeout_s=1.0)
    intake = Intake(InstanceStore(str(tmp_path / "store"), 10**7), announcer, "image-events")
    with pytest.raises(Refusal) as refused:
        intake.accept(io.BytesIO(payload), sender="CT_ROOM_1", protocol="dimse")
    assert (refused.value.reason, refused.value.retry) == (reason, False)
    assert status_for(refused.value) == CANNOT_UNDERSTAND
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]


def test_stow_bodies_are_split_into_parts_across_reads(monkeypatch):
    monkeypatch.setattr(stow, "_CHUNK", 7)  # boundaries straddle reads
    parts = [b"first part \r\n--not-the-boundary", b"", b"x" * 100]
    body = b"".join(b"--BOUND\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--BOUND--\r\n"
    found = [part.read() for part in stow.multipart_parts(io.BytesIO(body), b"BOUND",
                                                          len(body))]
    assert found == parts
    with pytest.raises(stow.BadRequest):
        list(stow.multipart_parts(io.BytesIO(body[:40]), b"BOUND", 40))
    # The same body sent chunked, as Orthanc's DICOMweb client sends it.
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 50]), body[i:i + 50])
                       for i in range(0, len(body), 50)) + b"0\r\n\r\n"
    found = [part.read() for part in stow.multipart_parts(
        stow.ChunkedBody(io.BytesIO(chunked)), b"BOUND", None)]
    assert found == parts


def test_series_complete_notices_follow_their_schema_which_is_open_for_additions():
    event = new_event(study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                      sop_instance_uid="1.2.3.4.5", modality="CT", uri="/x.dcm",
                      content_type="application/dicom", sender="CT_ROOM_1")
    series = _OpenSeries("1.2.3", "CT", "CT_ROOM_1", time.time(), time.time(),
                         time.monotonic(), {event.event_id})
    notice = notice_for("1.2.3.4", series, 60.0)
    assert validation.errors(validation.SERIES_COMPLETE, notice) == []
    assert notice_for("1.2.3.4", series, 60.0)["notice_id"] == notice["notice_id"]
    assert validation.errors(validation.SERIES_COMPLETE, {**notice, "added_later": 1}) == []
    assert validation.errors(validation.SERIES_COMPLETE, {**notice, "schema_version": 2})
    # It is not an image event: on the events topic the job would dead-letter it.
    assert validation.errors(validation.IMAGE_EVENT, notice)

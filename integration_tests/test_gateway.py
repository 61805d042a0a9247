"""The DICOM gateway with real peers: dcmtk's echoscu/storescu as a modality, Orthanc as a
PACS, the embedded broker, and the real streaming job settling every announced image.

Outcomes are counted by ``medimg reconcile``'s code from the topics, never by the gateway.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pydicom
import pytest

from integration_tests.conftest import STUDY_IMAGE_SIZE
from scenarios.dicom_peers import OrthancServer, PeerMissing, dicom_binary, run_scu
from streaming.contracts import validation
from streaming.contracts.events import parse_event
from streaming.kafka.admin import ensure_topics
from streaming.kafka.outcomes import OutcomeLog
from streaming.kafka.reading import read_topic
from streaming.local import phantoms
from streaming.local.broker import free_port
from streaming.local.local_gateway import LocalGateway
from streaming.local.reference_data import scanner_files
from streaming.tools.dicom_send import STORESCU_PROPOSAL, send_files, transfer_syntax_of
from streaming.tools.reconcile import reconcile

MODALITY = "CT_ROOM_1"
SCANNER_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm")


def require(name: str) -> str:
    """The program's path; under CI a missing one fails (naming its Debian package)."""
    try:
        return dicom_binary(name)
    except PeerMissing as missing:
        if os.environ.get("CI") == "true":
            pytest.fail(str(missing))
        pytest.skip(str(missing))


@pytest.fixture
def start_gateway(broker, topics, tmp_path):
    gateways: list[LocalGateway] = []

    def start(*extra: str, callers: str = MODALITY, dicomweb: bool = False,
              storage_root: Path | None = None) -> LocalGateway:
        gateway = LocalGateway(
            bootstrap_servers=broker.bootstrap_servers, events_topic=topics.events,
            storage_root=storage_root or tmp_path / "gateway-store", allowed_callers=callers,
            log_path=tmp_path / f"gateway-{len(gateways)}.log", dicomweb=dicomweb,
            extra=extra).start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        gateway.kill()


def store(gateway: LocalGateway, *paths: Path, calling: str = MODALITY,
          options: tuple[str, ...] = ()) -> SendResult:
    """storescu, one run per transfer syntax: it proposes one compressed syntax per run,
    as a modality configured for it would."""
    by_proposal: dict[str, list[Path]] = {}
    for path in paths:
        by_proposal.setdefault(STORESCU_PROPOSAL.get(transfer_syntax_of(path), "-x="),
                               []).append(path)
    runs = [run_scu("storescu", proposal, *options, "-aet", calling, "-aec", gateway.ae_title,
                    "127.0.0.1", str(gateway.port), *map(str, group))
            for proposal, group in by_proposal.items()]
    return SendResult(max(r.returncode for r in runs),
                      "".join(r.stdout + r.stderr for r in runs))


@dataclasses.dataclass
class SendResult:
    returncode: int
    output: str


def events_on(kafka, topic: str) -> list:
    return [parse_event(record.value) for record in read_topic(kafka, topic)]


def scanner_file(name: str) -> Path:
    found = [p for p in scanner_files() if p.name == name]
    assert found, f"{name} is not among pydicom's test files"
    return found[0]


@pytest.fixture
def modality_files(tmp_path) -> list[Path]:
    """Real scanner files (CT, MR, JPEG 2000, an RT dose without an image the job can
    score) and phantom chest studies in several transfer syntaxes."""
    cases = phantoms.generate_study_set(tmp_path / "phantoms", 3, seed=15, size=STUDY_IMAGE_SIZE)
    return [scanner_file(name) for name in SCANNER_FILES] + [c.path for c in cases]


def test_a_modality_sends_with_dcmtk_and_every_image_is_settled_by_the_job(
        kafka, topics, start_job, start_gateway, modality_files):
    require("storescu")
    job = start_job()
    gateway = start_gateway()

    echo = run_scu("echoscu", "-aet", MODALITY, "-aec", gateway.ae_title, "127.0.0.1",
                   str(gateway.port))
    assert echo.returncode == 0, echo.stdout + echo.stderr

    sent = store(gateway, *modality_files)
    assert sent.returncode == 0, sent.output
    assert "Refused" not in sent.output

    events = events_on(kafka, topics.events)
    assert len(events) == len(modality_files)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in modality_files]
    assert sorted(e.sop_instance_uid for e in events) == sorted(
        str(h.SOPInstanceUID) for h in headers)
    for event in events:
        stored = Path(event.uri)
        # Stored by content hash under the storage root, and announced with that hash.
        assert stored.parent.parent == gateway.storage_root.resolve()
        assert stored.name == f"{event.sha256}.dcm"
        assert event.sender == MODALITY
        assert pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID == (
            event.sop_instance_uid)
    assert not list(gateway.storage_root.glob(".incoming-*")), "no half-written file is left"

    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as outcomes:
        assert outcomes.wait_for([e.event_id for e in events], timeout_s=180), job.log_tail()
    report = reconcile(kafka, topics.events, topics.findings, topics.dead_letters)
    assert (report.lost, report.duplicated) == ([], {})
    assert report.findings + report.dead_letters == len(modality_files)
    assert job.running()


def test_a_broker_outage_refuses_until_it_ends_and_resends_are_announced_once(
        kafka, broker, topics, start_job, start_gateway, redis_server, tmp_path):
    require("storescu")
    job = start_job("--redis_url", redis_server.url)
    gateway = start_gateway("--broker_timeout_s", "3")
    files = [c.path for c in phantoms.generate_study_set(tmp_path / "studies", 2, seed=16,
                                                         size=STUDY_IMAGE_SIZE)]
    ensure_topics(kafka, {topics.events: 3})

    broker.pause()
    try:
        # --no-halt: the modality goes on with the next instance after a failure.
        during = store(gateway, *files, options=("--no-halt",))
    finally:
        broker.resume()
    # The modality hears "out of resources" for every instance, in time, and will retry
    # (with --no-halt storescu's exit status does not report failed stores).
    assert (during.output).count("Refused: OutOfResources") == len(files)

    retried = store(gateway, *files)
    assert retried.returncode == 0, retried.output

    # A gateway crash between the broker's ack and its answer: the modality sends again,
    # and the new gateway announces the same events (same event_id) once more.
    gateway.kill()
    restarted = start_gateway("--broker_timeout_s", "3")
    again = store(restarted, *files)
    assert again.returncode == 0, again.output

    events = events_on(kafka, topics.events)
    assert len({e.event_id for e in events}) == len(files)
    assert len(events) >= 2 * len(files)  # the retry and the resend are both on the topic
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as outcomes:
        assert outcomes.wait_for({e.event_id for e in events}, timeout_s=180), job.log_tail()
        outcomes.drain(quiet_s=3)
    report = reconcile(kafka, topics.events, topics.findings, topics.dead_letters)
    assert report.events == len(files)
    assert (report.lost, report.duplicated) == ([], {})
    assert report.findings + report.dead_letters == len(files)


def test_unknown_callers_are_rejected_and_oversized_instances_refused_whole(
        kafka, topics, start_gateway, tmp_path):
    require("storescu")
    metrics_port = free_port()
    big = scanner_file("CT_small.dcm")
    small = phantoms.generate_study_set(tmp_path / "small", 1, seed=17, size=32)[0].path
    assert small.stat().st_size < 20_000 < big.stat().st_size
    gateway = start_gateway("--max_file_bytes", "20000", "--metrics_port", str(metrics_port),
                            callers=f"{MODALITY},PINNED@127.0.0.2")

    stranger = run_scu("echoscu", "-aet", "STRANGER", "-aec", gateway.ae_title, "127.0.0.1",
                       str(gateway.port))
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    # A known AE title from an address it is not pinned to is rejected too.
    pinned = run_scu("echoscu", "-aet", "PINNED", "-aec", gateway.ae_title, "127.0.0.1",
                     str(gateway.port))
    assert pinned.returncode != 0

    refused = store(gateway, big)
    assert refused.returncode != 0
    assert "Refused: OutOfResources" in refused.output
    accepted = store(gateway, small)
    assert accepted.returncode == 0, accepted.output

    stored = [p for p in gateway.storage_root.rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [f"{events_on(kafka, topics.events)[0].sha256}.dcm"]
    assert len(events_on(kafka, topics.events)) == 1

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        scrape = response.read().decode()
    assert 'medimg_gateway_refused_total{reason="calling_ae_not_allowed"} 1.0' in scrape
    assert 'medimg_gateway_refused_total{reason="address_not_allowed"} 1.0' in scrape
    assert 'medimg_gateway_refused_total{reason="too_large"} 1.0' in scrape
    assert 'medimg_gateway_instances_announced_total 1.0' in scrape
    assert "medimg_gateway_receive_to_ack_seconds_count 1.0" in scrape
    header = pydicom.dcmread(small, stop_before_pixels=True)
    for value in (header.PatientID, str(header.StudyInstanceUID)):
        assert value not in scrape
        assert value not in gateway.log_text()


def test_orthanc_forwards_a_study_as_a_pacs_would(kafka, topics, start_gateway, tmp_path):
    require("Orthanc")
    gateway = start_gateway(callers="MEDIMG_PACS")
    cases = phantoms.generate_study_set(tmp_path / "studies", 8, seed=18, size=STUDY_IMAGE_SIZE)
    ct_study = max({c.study_instance_uid for c in cases},
                   key=lambda uid: sum(c.study_instance_uid == uid for c in cases))
    study_files = [c.path for c in cases if c.study_instance_uid == ct_study]
    assert len(study_files) >= 2

    with OrthancServer(tmp_path / "orthanc", ae_title="MEDIMG_PACS",
                       modalities={"medimg": (gateway.ae_title, "127.0.0.1",
                                              gateway.port)}) as orthanc:
        study_ids = {orthanc.upload(path)["ParentStudy"] for path in study_files}
        assert len(study_ids) == 1
        answer = orthanc.post("/modalities/medimg/store", json.dumps(
            {"Resources": sorted(study_ids), "Synchronous": True}).encode())
    assert answer.get("FailedInstancesCount", 0) == 0, answer

    events = events_on(kafka, topics.events)
    assert sorted(e.sop_instance_uid for e in events) == sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study_files)
    assert {e.sender for e in events} == {"MEDIMG_PACS"}
    assert {e.study_instance_uid for e in events} == {ct_study}


def test_orthanc_forwards_over_stow_rs_with_its_dicomweb_plugin(kafka, topics, start_gateway,
                                                                tmp_path):
    require("Orthanc")
    gateway = start_gateway(dicomweb=True, callers="UNUSED")
    cases = phantoms.generate_study_set(tmp_path / "studies", 2, seed=24, size=32)
    orthanc = OrthancServer(tmp_path / "orthanc", modalities={}, dicomweb_servers={
        "medimg": f"http://127.0.0.1:{gateway.dicomweb_port}/"})
    try:
        orthanc.start()
    except PeerMissing as missing:  # the DICOMweb plugin
        if os.environ.get("CI") == "true":
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    try:
        study_ids = sorted({orthanc.upload(c.path)["ParentStudy"] for c in cases})
        orthanc.post("/dicom-web/servers/medimg/stow", json.dumps(
            {"Resources": study_ids, "Synchronous": True}).encode())
    finally:
        orthanc.stop()

    events = events_on(kafka, topics.events)
    assert sorted(e.sop_instance_uid for e in events) == sorted(
        c.sop_instance_uid for c in cases)
    assert {e.sender for e in events} == {"DICOMWEB"}


def test_a_series_that_stops_growing_gets_one_notice_on_its_own_topic(
        kafka, topics, start_gateway, tmp_path):
    notices_topic = f"series-complete-{topics.group}"
    gateway = start_gateway("--series_complete_s", "2", "--notices_topic", notices_topic)
    cases = phantoms.generate_study_set(tmp_path / "studies", 8, seed=19, size=32)
    series_uid = max({c.series_instance_uid for c in cases},
                     key=lambda uid: sum(c.series_instance_uid == uid for c in cases))
    series_files = [c.path for c in cases if c.series_instance_uid == series_uid]
    # One association, as a modality sends a series (storescu would need one run per
    # transfer syntax, and a pause between runs could end the series early).
    sent = send_files(series_files, host="127.0.0.1", port=gateway.port,
                      called_ae=gateway.ae_title, calling_ae=MODALITY, use_dcmtk=False)
    assert [s.status for s in sent] == [0] * len(series_files)

    events = events_on(kafka, topics.events)
    notices = _wait_for_records(kafka, notices_topic, 1)
    assert len(notices) == 1
    assert validation.errors(validation.SERIES_COMPLETE, notices[0]) == []
    assert notices[0]["series_instance_uid"] == series_uid
    assert notices[0]["instances"] == len(series_files)
    assert notices[0]["event_ids"] == sorted(e.event_id for e in events)
    # Never on the events topic, where the job would dead-letter it.
    assert all(e.series_instance_uid == series_uid for e in events)
    assert len(events) == len(series_files)


def _wait_for_records(kafka, topic: str, count: int, timeout_s: float = 60) -> list[dict]:
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = [json.loads(r.value) for r in read_topic(kafka, topic, timeout_s=30)]
        except Exception:  # noqa: BLE001 - the topic may not exist yet
            found = []
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_dcmtk_is_found_or_named(monkeypatch):
    """The message a user sees without dcmtk names the Debian package to install."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(PeerMissing, match="apt-get install dcmtk"):
        dicom_binary("storescu")


def test_stow_rs_stores_and_announces_each_instance(kafka, topics, start_gateway, tmp_path):
    from dicomweb_client.api import DICOMwebClient  # noqa: PLC0415

    gateway = start_gateway(dicomweb=True, storage_root=tmp_path / "stow-store")
    cases = phantoms.generate_study_set(tmp_path / "studies", 2, seed=20, size=32)
    datasets = [pydicom.dcmread(c.path) for c in cases]
    client = DICOMwebClient(url=f"http://127.0.0.1:{gateway.dicomweb_port}")
    answer = client.store_instances(datasets=datasets)

    events = events_on(kafka, topics.events)
    assert sorted(e.sop_instance_uid for e in events) == sorted(
        c.sop_instance_uid for c in cases)
    assert {e.sender for e in events} == {"DICOMWEB"}
    assert sorted(item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence) == (
        sorted(c.sop_instance_uid for c in cases))
    for event in events:
        assert pydicom.dcmread(event.uri).SOPInstanceUID == event.sop_instance_uid


def test_tls_senders_need_a_certificate_the_gateway_trusts(kafka, topics, start_gateway,
                                                          tmp_path):
    from scenarios.tls_front import self_signed_certificate  # noqa: PLC0415

    require("storescu")
    server_cert, server_key = self_signed_certificate(tmp_path / "gateway-tls")
    client_cert, client_key = self_signed_certificate(tmp_path / "modality-tls")
    gateway = start_gateway("--tls_certfile", str(server_cert), "--tls_keyfile",
                            str(server_key), "--tls_cafile", str(client_cert), dicomweb=True)
    image, other = [c.path for c in phantoms.generate_study_set(tmp_path / "studies", 2,
                                                                 seed=21, size=32)][:2]

    plain = store(gateway, image)
    assert plain.returncode != 0
    sent = store(gateway, image, options=("+tls", str(client_key), str(client_cert),
                                          "+cf", str(server_cert)))
    assert sent.returncode == 0, sent.output

    # STOW-RS on the same certificate, with the same demand for a client certificate.
    import requests  # noqa: PLC0415

    url = f"https://127.0.0.1:{gateway.dicomweb_port}/studies"
    body = (b"--B\r\nContent-Type: application/dicom\r\n\r\n" + other.read_bytes()
            + b"\r\n--B--\r\n")
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'}
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(url, data=body, headers=headers, verify=str(server_cert), timeout=30)
    answer = requests.post(url, data=body, headers=headers, verify=str(server_cert),
                           cert=(str(client_cert), str(client_key)), timeout=30)
    assert answer.status_code == 200, answer.text

    assert sorted(e.sop_instance_uid for e in events_on(kafka, topics.events)) == sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (image, other))


def test_pynetdicom_sends_where_dcmtk_is_absent(kafka, topics, start_gateway, tmp_path):
    gateway = start_gateway()
    cases = phantoms.generate_study_set(tmp_path / "studies", 3, seed=22, size=32)
    sent = send_files([c.path for c in cases], host="127.0.0.1", port=gateway.port,
                      called_ae=gateway.ae_title, calling_ae=MODALITY, use_dcmtk=False)
    assert [s.status for s in sent] == [0] * len(cases)
    assert sorted(e.sop_instance_uid for e in events_on(kafka, topics.events)) == sorted(
        c.sop_instance_uid for c in cases)


def test_the_demo_sends_its_studies_through_the_gateway(phantom_registry, tmp_path):
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    from streaming.local.demo import run_demo  # noqa: PLC0415

    shutil.copytree(phantom_registry, tmp_path / "demo" / "registry")
    screen = io.StringIO()
    assert run_demo(workdir=str(tmp_path / "demo"), studies=4, seed=23,
                    console=Console(file=screen, width=120)) == 0, screen.getvalue()
    assert "DICOM gateway" in screen.getvalue()
    assert list((tmp_path / "demo" / "received").rglob("*.dcm"))


def test_stow_rs_refuses_an_oversized_instance_with_its_status(kafka, topics, start_gateway,
                                                               tmp_path):
    import requests  # noqa: PLC0415 - dicomweb-client's own HTTP library

    gateway = start_gateway("--max_file_bytes", "20000", dicomweb=True,
                            storage_root=tmp_path / "stow-store")
    big = scanner_file("CT_small.dcm").read_bytes()
    body = (b"--B\r\nContent-Type: application/dicom\r\n\r\n" + big + b"\r\n--B--\r\n")
    answer = requests.post(f"http://127.0.0.1:{gateway.dicomweb_port}/studies", data=body,
                           headers={"Content-Type": 'multipart/related; type="application/'
                                                    'dicom"; boundary=B'}, timeout=60)
    assert answer.status_code == 409
    assert answer.json()["00081198"]["Value"] == [{"00081197": {"vr": "US",
                                                                "Value": [0xA700]}}]
    assert not [p for p in (tmp_path / "stow-store").rglob("*") if p.is_file()]
    assert events_on(kafka, topics.events) == []


def test_no_canary_identity_reaches_the_gateways_logs_metrics_or_events(
        kafka, topics, broker, tmp_path):
    """Real files with canary patient identities (some broken, some with canaries where a
    header reader must look) sent with storescu to a gateway logging at DEBUG."""
    from scenarios import phi  # noqa: PLC0415

    require("storescu")
    metrics_port = free_port()
    gateway = LocalGateway(
        bootstrap_servers=broker.bootstrap_servers, events_topic=topics.events,
        storage_root=tmp_path / "store", allowed_callers=MODALITY,
        log_path=tmp_path / "gateway.log", extra=("--metrics_port", str(metrics_port)),
        env={"MEDIMG_LOG_LEVEL": "DEBUG"}).start()
    try:
        canaries = phi.write_canary_files(tmp_path / "canary")
        readable = [c.path for c in canaries if _has_meta(c.path)]
        sent = store(gateway, *readable, options=("--no-halt",))
        assert "Received Store Response (Success)" in sent.output
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            scrape = response.read().decode()
        events = "\n".join(record.value.decode("utf-8", "replace")
                           for record in read_topic(kafka, topics.events))
    finally:
        gateway.stop()
    assert events, "some canary files must have been announced"
    hits = phi.canary_hits({"gateway_log": gateway.log_text(), "metrics": scrape,
                            "events": events})
    assert phi.total_hits(hits) == 0, hits


def _has_meta(path: Path) -> bool:
    try:
        return bool(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - broken on purpose; storescu could not send it either
        return False

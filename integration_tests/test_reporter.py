"""`medimg report` against a real Orthanc (DICOMweb plugin) holding the source studies.

The reporter fetches each finding's source image by its UIDs (WADO-RS), stores a TID 1500
SR and a Grad-CAM Secondary Capture back (STOW-RS); the tests read them back through
QIDO/WADO, parse the SR with highdicom and compare its values with the finding's.
"""

from __future__ import annotations

import json
import os
import uuid

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from scenarios.orthanc_server import OrthancServer, missing_orthanc
from streaming.contracts import validation
from streaming.contracts.reasons import Reason
from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.preprocessing import preprocess
from streaming.imaging.types import ImageLimits
from streaming.kafka.admin import ensure_topics
from streaming.local import phantoms
from streaming.local.broker import free_port
from streaming.local.demo import DEMO_MODEL, STUDY_IMAGE_SIZE
from streaming.modeling.loading import load_model
from streaming.modeling.registry import ModelRegistry
from streaming.reporter.consumer import run_reporter
from streaming.reporter.heatmap import NOT_FOR_DIAGNOSTIC_USE
from streaming.reporter.pacs import Pacs
from streaming.reporter.reports import Reporter, ReportRejected, report_uids
from streaming.reporter.structured_report import SCORE, THRESHOLD, URGENT, PRESENT, ABSENT, YES, NO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    missing = missing_orthanc()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: apt-get install orthanc orthanc-dicomweb")
        pytest.skip(missing)
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def source_cases(orthanc, tmp_path_factory):
    """Phantom chest studies (with and without a lesion) stored in the PACS; CT left out."""
    folder = tmp_path_factory.mktemp("studies")
    cases = [case for case in phantoms.generate_study_set(folder, 6, seed=5, size=STUDY_IMAGE_SIZE)
             if case.modality != "CT"][:4]
    for case in cases:
        orthanc.upload(case.path.read_bytes())
    return cases


def score_finding(registry_root, case) -> dict:
    """A finding as the job emits it, scored by the production phantom model."""
    registry = ModelRegistry(str(registry_root))
    version = registry.production(DEMO_MODEL)
    loaded = load_model(registry, DEMO_MODEL, version)
    image = decode_image_bytes(case.path.read_bytes(), "application/dicom", ImageLimits())
    probabilities = loaded.predict(preprocess(image.pixels, loaded.metadata.preprocessing)[None])[0]
    decision = loaded.metadata.decide(probabilities)
    event_id = str(uuid.uuid4())
    finding = {
        "schema_version": 1, "finding_id": str(uuid.uuid5(uuid.NAMESPACE_URL, event_id)),
        "event_id": event_id, "study_instance_uid": case.study_instance_uid,
        "series_instance_uid": case.series_instance_uid, "sop_instance_uid": case.sop_instance_uid,
        "modality": case.modality, "status": "scored",
        "model": {"name": DEMO_MODEL, "version": version}, "scores": decision.scores,
        "label": decision.label, "threshold": loaded.metadata.threshold,
        "positive": decision.positive,
        "urgent": decision.positive and decision.positive_score >= loaded.metadata.urgent_threshold,
        "priority": "routine", "event_sent_at": "2026-12-01T08:00:00.000+00:00",
        "received_at": "2026-12-01T08:00:00.100+00:00", "emitted_at": "2026-12-01T08:00:00.200+00:00",
        "latency_ms": 200.0}
    assert validation.errors(validation.FINDING, finding, strict=True) == []
    return finding


def study_instances(orthanc, study_uid) -> dict[str, dict]:
    """SOP instance UID -> QIDO attributes, as the PACS lists the study."""
    found = Pacs(orthanc.dicomweb_url).instances(study_uid)
    return {item["00080018"]["Value"][0]: item for item in found}


def _values(group, concept):
    return [item for item in group if item.name == concept]


def test_the_sr_in_the_pacs_says_what_the_finding_says_and_a_replay_adds_nothing(
        orthanc, source_cases, phantom_registry):
    case = source_cases[0]
    finding = score_finding(phantom_registry, case)
    reporter = Reporter(Pacs(orthanc.dicomweb_url), ModelRegistry(str(phantom_registry)))
    outcome = reporter.report(finding)
    uids = report_uids(finding["finding_id"])
    assert set(outcome.stored) == set(uids.values())

    listed = study_instances(orthanc, case.study_instance_uid)
    assert set(listed) == {case.sop_instance_uid, *uids.values()}
    pacs = Pacs(orthanc.dicomweb_url)
    stored_sr = listed[uids["sr"]]
    sr_dataset = pacs.fetch_instance(case.study_instance_uid, stored_sr["0020000E"]["Value"][0],
                                     uids["sr"])
    source = pacs.fetch_instance(case.study_instance_uid, case.series_instance_uid,
                                 case.sop_instance_uid)

    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_dataset)
    # Identity comes from the PACS's source instance, never from the finding.
    assert (sr.PatientID, sr.PatientName) == (source.PatientID, source.PatientName)
    assert sr.StudyInstanceUID == case.study_instance_uid
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    report = hd.sr.MeasurementReport.from_sequence([sr])
    [group] = report.get_image_measurement_groups()
    assert group.finding_type == hd.sr.CodedConcept("52988006", "SCT", "Lesion")
    assert [ref.referenced_sop_instance_uid for ref in group.source_images] == [case.sop_instance_uid]
    # TID 4019, in the group: which model and version said so.
    [algorithm_name] = find_content_items(group[0], name=codes.DCM.AlgorithmName)
    [algorithm_version] = find_content_items(group[0], name=codes.DCM.AlgorithmVersion)
    assert algorithm_name.TextValue == DEMO_MODEL
    assert algorithm_version.TextValue == finding["model"]["version"]
    [score] = _values(group.get_measurements(), SCORE)
    [threshold] = _values(group.get_measurements(), THRESHOLD)
    assert score.value == pytest.approx(finding["scores"]["lesion"], abs=1e-6)
    assert threshold.value == pytest.approx(finding["threshold"], abs=1e-6)
    evaluations = {item.name: item.value for item in group.get_qualitative_evaluations()}
    assert evaluations[group.finding_type] == (PRESENT if finding["positive"] else ABSENT)
    assert evaluations[URGENT] == (YES if finding["urgent"] else NO)
    [observer] = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert observer.observer_identifying_attributes.model_name == DEMO_MODEL

    before = orthanc.instance_count()
    again = Reporter(Pacs(orthanc.dicomweb_url), ModelRegistry(str(phantom_registry)))
    assert again.report(finding).already_stored
    assert orthanc.instance_count() == before


def test_the_heatmap_is_a_secondary_capture_not_for_diagnostic_use(
        orthanc, source_cases, phantom_registry):
    case = source_cases[1]
    finding = score_finding(phantom_registry, case)
    Reporter(Pacs(orthanc.dicomweb_url), ModelRegistry(str(phantom_registry))).report(finding)
    uid = report_uids(finding["finding_id"])["heatmap"]
    listed = study_instances(orthanc, case.study_instance_uid)
    capture = Pacs(orthanc.dicomweb_url).fetch_instance(
        case.study_instance_uid, listed[uid]["0020000E"]["Value"][0], uid)
    assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert list(capture.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert capture.BurnedInAnnotation == "YES"
    assert NOT_FOR_DIAGNOSTIC_USE in capture.SeriesDescription.upper()
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == case.sop_instance_uid
    # The source's layout, enlarged by a whole factor so the burned-in warning is legible.
    assert capture.Rows == capture.Columns and capture.Rows % STUDY_IMAGE_SIZE == 0
    pixels = capture.pixel_array
    assert pixels.shape == (capture.Rows, capture.Columns, 3)
    # Coloured where the model looked: some pixels are not gray.
    assert np.any(np.ptp(pixels.astype(int), axis=-1) > 40)


def test_a_finding_whose_source_the_pacs_lacks_is_rejected_with_a_reason(
        orthanc, source_cases, phantom_registry):
    finding = score_finding(phantom_registry, source_cases[2])
    finding["sop_instance_uid"] = "1.2.826.0.1.3680043.8.498.999"  # not in the PACS
    with pytest.raises(ReportRejected) as rejected:
        Reporter(Pacs(orthanc.dicomweb_url), ModelRegistry(str(phantom_registry))).report(finding)
    assert rejected.value.reason == Reason.REPORT_SOURCE_UNAVAILABLE


def test_an_unreachable_pacs_is_retried_with_backoff_then_dead_lettered(phantom_registry, source_cases):
    waits = []
    # A loopback port nothing listens on: connections are refused at once.
    pacs = Pacs(f"http://127.0.0.1:{free_port()}/dicom-web", attempts=4, backoff_s=0.5,
                timeout_s=5, sleep=waits.append)
    finding = score_finding(phantom_registry, source_cases[2])
    with pytest.raises(ReportRejected) as rejected:
        Reporter(pacs, ModelRegistry(str(phantom_registry))).report(finding)
    assert rejected.value.reason == Reason.REPORT_PACS_UNAVAILABLE
    assert waits == [0.5, 1.0, 2.0]


def test_medimg_report_consumes_the_findings_topic_and_dead_letters_what_it_cannot_report(
        orthanc, source_cases, phantom_registry, kafka):
    suffix = uuid.uuid4().hex[:8]
    findings_topic, dead_topic = f"findings-{suffix}", f"report-dead-letters-{suffix}"
    ensure_topics(kafka, {findings_topic: 2})
    good = [score_finding(phantom_registry, case) for case in source_cases[2:4]]
    lost = score_finding(phantom_registry, source_cases[0])
    lost["sop_instance_uid"] = "1.2.826.0.1.3680043.8.498.404"  # not in the PACS
    not_applicable = dict(good[0], finding_id=str(uuid.uuid4()), status="not_applicable",
                          scores={}, label=None, threshold=None, positive=False, urgent=False)
    producer = KafkaProducer(**kafka.client_kwargs(), acks="all")
    for finding in [*good, lost, not_applicable]:
        producer.send(findings_topic, key=finding["study_instance_uid"].encode(),
                      value=json.dumps(finding).encode()).get(timeout=30)
    producer.send(findings_topic, key=b"x", value=b"not json").get(timeout=30)
    producer.close()

    reporter = Reporter(Pacs(orthanc.dicomweb_url), ModelRegistry(str(phantom_registry)),
                        heatmaps=False)
    group = f"medimg-report-{suffix}"
    counts = run_reporter(kafka, reporter, findings_topic=findings_topic,
                          dead_letter_topic=dead_topic, group=group, limit=5)
    assert (counts.reported, counts.skipped, counts.dead_letters) == (2, 1, 2)
    for finding in good:
        assert report_uids(finding["finding_id"])["sr"] in study_instances(
            orthanc, finding["study_instance_uid"])

    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    consumer.assign([TopicPartition(dead_topic, 0)])
    consumer.seek_to_beginning()
    records = []
    while len(records) < 2:
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    consumer.close()
    letters = [json.loads(record.value) for record in records]
    assert all(validation.errors(validation.DEAD_LETTER, letter, strict=True) == []
               for letter in letters)
    assert sorted(letter["reason"] for letter in letters) == [
        "report_failed", "report_source_unavailable"]
    assert {letter["stage"] for letter in letters} == {"report"}

    # A restarted reporter on the same group resumes after what it settled: nothing new.
    before = orthanc.instance_count()
    again = run_reporter(kafka, reporter, findings_topic=findings_topic,
                         dead_letter_topic=dead_topic, group=group, idle_timeout_s=3)
    assert again.handled == 0
    # Another group (a full replay of the topic) re-reads everything and stores nothing.
    replay = run_reporter(kafka, reporter, findings_topic=findings_topic,
                          dead_letter_topic=dead_topic, group=f"{group}-replay", limit=5)
    assert replay.already_stored == 2
    assert orthanc.instance_count() == before

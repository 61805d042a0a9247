"""The schemas are the contract: events in, findings and dead letters out."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import jsonschema
import pytest
import referencing

from streaming.contracts import validation
from streaming.contracts.dead_letters import Rejection, Stage, build_dead_letter, payload_excerpt
from streaming.contracts.events import EventRejected, new_event, parse_event
from streaming.job.findings import build_finding, finding_id
from streaming.modeling.metadata import Applicability, Decision
from streaming.modeling.scoring import Scoring
from streaming.contracts.reasons import Reason
from streaming.contracts.records import KafkaRecord, SourcePosition

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
SOURCE = SourcePosition("image-events", 2, 41)
PHI_FIELDS = {"patient_name", "patient_id", "patient_birth_date", "accession_number",
              "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"}


def an_event(**overrides):
    fields = dict(study_instance_uid=STUDY, series_instance_uid=STUDY + ".1",
                  sop_instance_uid=STUDY + ".1.1", modality="CR", uri="/data/x.dcm",
                  content_type="application/dicom", sender="CR_ROOM_3", priority="routine")
    fields.update(overrides)
    return new_event(**fields)


def a_record(payload: bytes) -> KafkaRecord:
    return KafkaRecord(position=SOURCE, key=STUDY.encode(), value=payload,
                       timestamp_ms=0, received_at=1_790_000_000.0)


def test_every_schema_is_a_valid_json_schema():
    for name in (validation.IMAGE_EVENT, validation.FINDING, validation.DEAD_LETTER,
                 validation.MODEL_METADATA):
        schema = validation.schema(name)
        validation.validator(name).check_schema(schema)
        assert schema["$id"].endswith(name)


def test_a_new_event_is_valid_and_round_trips():
    event = an_event(sha256="a" * 64, body_part_examined="CHEST")
    assert validation.errors(validation.IMAGE_EVENT, event.to_document()) == []
    assert parse_event(event.to_json()) == event


def test_event_ids_are_unique():
    assert an_event().event_id != an_event().event_id


@pytest.mark.parametrize("change, field", [
    ({"modality": "cr"}, "modality"),
    ({"study_instance_uid": "1.2.abc"}, "study_instance_uid"),
    ({"study_instance_uid": "1." + "2" * 70}, "study_instance_uid"),
    ({"priority": "stat"}, "priority"),
    ({"content_type": "application/pdf"}, "content_type"),
    ({"sent_at": "yesterday"}, "sent_at"),
    ({"sha256": "XYZ"}, "sha256"),
    ({"event_id": ""}, "event_id"),
    # JSON Schema's "$" ends the input (ECMA-262), not "before a final newline" (Python).
    ({"study_instance_uid": STUDY + "\n"}, "study_instance_uid"),
    ({"modality": "CR\n"}, "modality"),
    ({"event_id": "abc\n"}, "event_id"),
])
def test_events_breaking_the_schema_are_rejected_naming_the_field(change, field):
    document = {**an_event().to_document(), **change}
    with pytest.raises(EventRejected) as rejected:
        parse_event(json.dumps(document).encode())
    assert rejected.value.reason == Reason.SCHEMA_VIOLATION
    assert field in rejected.value.message


def test_patient_identity_in_an_event_is_refused_without_echoing_it():
    document = {**an_event().to_document(), "patient_name": "DOE^JANE"}
    with pytest.raises(EventRejected) as rejected:
        parse_event(json.dumps(document).encode())
    assert rejected.value.reason == Reason.SCHEMA_VIOLATION
    assert "DOE" not in rejected.value.message and "patient_name" not in rejected.value.message


def test_missing_fields_are_named():
    document = an_event().to_document()
    del document["uri"], document["sender"]
    with pytest.raises(EventRejected) as rejected:
        parse_event(json.dumps(document).encode())
    assert "uri" in rejected.value.message and "sender" in rejected.value.message
    assert rejected.value.event_id == document["event_id"]


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", Reason.INVALID_JSON),
    (b"\xff\xfe\x00\x01", Reason.INVALID_JSON),
    (b"[1, 2, 3]", Reason.SCHEMA_VIOLATION),
    (b'"just a string"', Reason.SCHEMA_VIOLATION),
    (b'{"schema_version": 2, "event_id": "e1"}', Reason.UNSUPPORTED_SCHEMA_VERSION),
    (b'{"schema_version": "1"}', Reason.UNSUPPORTED_SCHEMA_VERSION),
    (b"[" * 100_000, Reason.INVALID_JSON),
    ('{"schema_version": 1}'.encode("utf-16"), Reason.INVALID_JSON),
    (b'{"schema_version": NaN}', Reason.INVALID_JSON),
    (b'{"schema_version": Infinity}', Reason.INVALID_JSON),
])
def test_unreadable_events_get_their_reason(payload, reason):
    with pytest.raises(EventRejected) as rejected:
        parse_event(payload, max_bytes=1_000_000)
    assert rejected.value.reason == reason


def test_oversized_events_are_refused_before_parsing():
    payload = an_event().to_json() + b" " * 70_000
    with pytest.raises(EventRejected) as rejected:
        parse_event(payload, max_bytes=64 * 1024)
    assert rejected.value.reason == Reason.PAYLOAD_TOO_LARGE


def scored(positive_score: float, threshold=0.5, urgent_threshold=0.9) -> Scoring:
    decision = Decision(scores={"normal": 1 - positive_score, "pneumonia": positive_score},
                        label="pneumonia" if positive_score >= threshold else "normal",
                        positive=positive_score >= threshold, positive_score=positive_score)
    return Scoring(Scoring.SCORED, "pneumonia-cnn", "3", decision=decision, threshold=threshold,
                   urgent_threshold=urgent_threshold, modality="CR")


def test_findings_are_valid_and_carry_no_patient_identity():
    event = an_event()
    document = build_finding(event, a_record(event.to_json()), scored(0.97))
    assert validation.errors(validation.FINDING, document, strict=True) == []
    assert not PHI_FIELDS & set(document)
    assert document["label"] == "pneumonia" and document["positive"] and document["urgent"]
    assert document["model"] == {"name": "pneumonia-cnn", "version": "3"}
    assert document["latency_ms"] >= 0


def test_urgent_flag_follows_the_event_or_a_strong_positive():
    routine, urgent = an_event(), an_event(priority="urgent")
    record = a_record(b"{}")
    assert not build_finding(routine, record, scored(0.7))["urgent"]     # positive, not strong
    assert build_finding(routine, record, scored(0.95))["urgent"]        # strong positive
    assert not build_finding(routine, record, scored(0.2))["urgent"]     # negative
    assert build_finding(urgent, record, scored(0.2))["urgent"]          # the sender said so


def test_not_applicable_findings_have_no_scores():
    event = an_event(modality="CT")
    scoring = Scoring(Scoring.NOT_APPLICABLE, "pneumonia-cnn", "3", modality="CT",
                      not_applicable_reason="modality CT is not one of CR, DX")
    document = build_finding(event, a_record(b"{}"), scoring)
    assert validation.errors(validation.FINDING, document, strict=True) == []
    assert document["status"] == "not_applicable" and document["scores"] == {}
    assert document["label"] is None and not document["positive"]


def test_finding_id_depends_on_the_event_only():
    event = an_event()
    record = a_record(b"{}")
    first = build_finding(event, record, scored(0.2))
    other_version = build_finding(event, record, Scoring(
        Scoring.SCORED, "pneumonia-cnn", "4", decision=scored(0.8).decision, threshold=0.5,
        urgent_threshold=0.9))
    assert first["finding_id"] == other_version["finding_id"] == finding_id(event.event_id)
    assert uuid.UUID(first["finding_id"]).version == 5
    assert finding_id("another-event") != first["finding_id"]


def test_dead_letters_are_valid_with_truncated_payload_and_its_digest():
    payload = b'{"schema_version": 1, "uri": "' + b"x" * 50_000 + b'"}'
    document = build_dead_letter(Rejection(Reason.PAYLOAD_TOO_LARGE, "too big", Stage.PARSE),
                                 SOURCE, payload, payload_limit=1024)
    assert validation.errors(validation.DEAD_LETTER, document, strict=True) == []
    assert document["payload"]["truncated"] and len(document["payload"]["data"]) == 1024
    assert document["payload"]["size_bytes"] == len(payload)
    assert document["source"] == {"topic": "image-events", "partition": 2, "offset": 41}
    assert document["event_id"] is None


def test_dead_letter_ids_are_stable_per_event_or_position():
    rejection = Rejection(Reason.NOT_AN_IMAGE, "not an image", Stage.LOAD)
    a = build_dead_letter(rejection, SOURCE, b"{}", event_id="e-1")
    b = build_dead_letter(rejection, SourcePosition("image-events", 0, 0), b"{}", event_id="e-1")
    c = build_dead_letter(rejection, SOURCE, b"{}")
    assert a["dead_letter_id"] == b["dead_letter_id"] != c["dead_letter_id"]


def test_binary_payloads_are_kept_as_base64():
    excerpt = payload_excerpt(b"\x00\xff\x10DICM", 100)
    assert excerpt["encoding"] == "base64" and not excerpt["truncated"]


def test_every_reason_code_comes_from_the_schema():
    codes = validation.schema(validation.DEAD_LETTER)["properties"]["reason"][
        validation.KNOWN_VALUES]
    assert [reason.value for reason in Reason] == codes


# -- how contracts grow (schemas/README.md) ---------------------------------------------

V1_0 = Path(__file__).parent / "contracts_v1_0"  # the v1 files as first published, frozen


def v1_0_consumer(name: str):
    """What an application developer built from the v1 files before the contracts opened."""
    frozen = [json.loads(path.read_text()) for path in sorted(V1_0.glob("*.json"))]
    registry = referencing.Registry().with_resources(
        (document["$id"], referencing.Resource.from_contents(document)) for document in frozen)
    schema = json.loads((V1_0 / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


# The codes and stages v1.0 knew: what the new job emits with them must still pass there.
V1_0_REASONS = json.loads((V1_0 / validation.DEAD_LETTER).read_text())[
    "properties"]["reason"]["enum"]


def test_a_v1_0_consumer_still_accepts_every_finding_the_job_emits():
    event = an_event()
    consumer = v1_0_consumer(validation.FINDING)
    not_applicable = Scoring(Scoring.NOT_APPLICABLE, "pneumonia-cnn", "3", modality="CT",
                             not_applicable_reason="modality CT is not one of CR, DX")
    for scoring in (scored(0.97), scored(0.2), not_applicable):
        document = build_finding(event, a_record(event.to_json()), scoring)
        assert validation.errors(validation.FINDING, document, strict=True) == []
        assert list(consumer.iter_errors(document)) == []


@pytest.mark.parametrize("code", V1_0_REASONS)
def test_a_v1_0_consumer_still_accepts_kafka_dead_letters_with_the_codes_it_knows(code):
    stage = Stage.PARSE if code in ("invalid_json", "schema_violation") else Stage.LOAD
    document = build_dead_letter(Rejection(Reason(code), "why, and what to do", stage),
                                 SOURCE, b'{"event_id": "e-1"}', event_id="e-1",
                                 study_instance_uid=STUDY)
    assert validation.errors(validation.DEAD_LETTER, document, strict=True) == []
    assert list(v1_0_consumer(validation.DEAD_LETTER).iter_errors(document)) == []


def future_dead_letter() -> dict:
    """What a later v1 job may send: a code this job does not know, a field it has not
    got, and a Pub/Sub source."""
    document = build_dead_letter(Rejection(Reason.NOT_AN_IMAGE, "why", Stage.LOAD), SOURCE,
                                 b"{}", event_id="e-2")
    document.update(reason="decoder_on_fire", retry_after_s=30,
                    source={"subscription": "projects/p/subscriptions/image-events",
                            "message_id": "1234567890"})
    return document


def test_consumers_of_the_current_files_accept_additive_changes():
    assert validation.errors(validation.DEAD_LETTER, future_dead_letter()) == []
    event = an_event()
    finding = build_finding(event, a_record(event.to_json()), scored(0.6))
    finding["explanation_uri"] = "gs://bucket/heatmaps/x.png"
    finding["model"]["family"] = "cnn"
    assert validation.errors(validation.FINDING, finding) == []


def test_the_job_may_emit_only_what_the_files_declare():
    problems = " ".join(validation.errors(validation.DEAD_LETTER, future_dead_letter(),
                                          strict=True))
    assert "decoder_on_fire" in problems and "retry_after_s" in problems
    event = an_event()
    finding = build_finding(event, a_record(event.to_json()), scored(0.6))
    finding["explanation_uri"] = "x"
    assert validation.errors(validation.FINDING, finding, strict=True) != []


def test_additive_changes_are_what_a_v1_0_consumer_cannot_take():
    """Why the rule needs saying: the first published files refused any addition."""
    assert list(v1_0_consumer(validation.DEAD_LETTER).iter_errors(future_dead_letter()))


def test_a_source_is_one_transport_or_the_other():
    for source in ({"topic": "t", "partition": 0, "offset": 1},
                   {"subscription": "projects/p/subscriptions/s", "message_id": "9"}):
        document = future_dead_letter() | {"source": source, "reason": "not_an_image"}
        document.pop("retry_after_s")
        assert validation.errors(validation.DEAD_LETTER, document, strict=True) == []
    document = future_dead_letter() | {"source": {"topic": "t"}}
    assert validation.errors(validation.DEAD_LETTER, document) != []


def test_applicability_rules_come_from_metadata():
    rules = Applicability.from_dict({"modalities": ["cr", "DX"], "body_parts": ["CHEST"],
                                     "photometric_interpretations": ["MONOCHROME1",
                                                                     "MONOCHROME2"]})
    assert rules.not_applicable_reason("CR", "CHEST", "MONOCHROME2") is None
    assert rules.not_applicable_reason("dx", None, "MONOCHROME1") is None
    assert "modality CT" in rules.not_applicable_reason("CT", "CHEST", "MONOCHROME2")
    assert "body part HAND" in rules.not_applicable_reason("CR", "HAND", "MONOCHROME2")
    assert "photometric" in rules.not_applicable_reason("CR", "CHEST", "RGB")
    strict = Applicability.from_dict({"modalities": ["CR"], "body_parts": ["CHEST"],
                                      "require_body_part": True})
    assert "no body part" in strict.not_applicable_reason("CR", None, "MONOCHROME2")


def test_the_readme_lists_every_reason_code():
    """A new reason changes the schema, the README and a test together."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = readme.split("Dead-letter reasons:", 1)[1].split("\n\n", 1)[0]
    assert [reason.value for reason in Reason if f"`{reason.value}`" not in listed] == []

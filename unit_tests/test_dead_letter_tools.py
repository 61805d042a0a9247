"""medimg dead-letters without a broker: summaries, the replay rule, re-stamping, refusals."""

from __future__ import annotations

import base64
import json

import pytest

from streaming.contracts import validation
from streaming.tools.dead_letter_tools import (REPLAY_RULES, DeadLetterRecord, ReplayReport,
                                         decide, parse_since, replay_lines, replay_plan,
                                         select, summarise_records, summary_lines)
from streaming.contracts.dead_letters import Rejection, Stage, build_dead_letter
from streaming.contracts.events import new_event
from streaming.contracts.reasons import Reason
from streaming.contracts.records import SourcePosition

NOW = 1_795_000_000.0


def event(**changes) -> dict:
    document = new_event(study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                         sop_instance_uid="1.2.3.4.5", modality="CR", uri="/studies/x.dcm",
                         content_type="application/dicom", sender="UNIT").to_document()
    return {**document, **changes}


def dead_letter(reason: Reason, payload: bytes, offset: int = 0, *, event_id=None,
                stage=Stage.LOAD, payload_limit=16 * 1024, timestamp_ms=None) -> DeadLetterRecord:
    """A dead letter as the job builds it, as read back from the dead-letter topic."""
    if event_id is None and stage != Stage.PARSE:
        event_id = json.loads(payload)["event_id"]
    document = build_dead_letter(Rejection(reason, f"because {reason.value}", stage),
                                 SourcePosition("image-events", 0, offset), payload,
                                 event_id=event_id, payload_limit=payload_limit)
    return DeadLetterRecord(SourcePosition("dead-letters", 0, offset), document,
                            timestamp_ms if timestamp_ms is not None else offset)


def encoded(document: dict) -> bytes:
    return json.dumps(document).encode()


def test_every_reason_of_the_schema_has_a_replay_rule():
    assert set(REPLAY_RULES) == {reason.value for reason in Reason}
    assert not any(REPLAY_RULES[r][0] for r in ("invalid_json", "schema_violation",
                                                "unsupported_schema_version",
                                                "payload_too_large", "no_pixel_data"))


def test_summary_counts_by_reason_with_the_latest_examples_first():
    records = [dead_letter(Reason.UNREADABLE_URI, encoded(event()), offset=i) for i in range(4)]
    records.append(dead_letter(Reason.INVALID_JSON, b"{oops", offset=9, stage=Stage.PARSE))
    records.append(DeadLetterRecord(SourcePosition("dead-letters", 1, 0), None, 0))
    summary = summarise_records(records, examples=2)
    assert (summary.total, summary.unreadable) == (6, 1)
    assert list(summary.by_reason) == ["unreadable_uri", "invalid_json"]
    unreadable = summary.by_reason["unreadable_uri"]
    assert unreadable.count == 4 and unreadable.replayable
    assert [e.source["offset"] for e in unreadable.latest] == [3, 2]
    assert unreadable.latest[0].event_id == records[3].document["event_id"]
    assert summary.by_reason["invalid_json"].latest[0].event_id is None
    lines = summary_lines(summary)
    assert lines[0] == "6 dead letters (1 unreadable records)"
    assert any(line.startswith("unreadable_uri") and "replayable" in line for line in lines)


def test_selection_by_reason_and_event_id_keeps_one_per_dead_letter_id():
    missing = event()
    records = [dead_letter(Reason.UNREADABLE_URI, encoded(missing), offset=1),
               dead_letter(Reason.UNREADABLE_URI, encoded(missing), offset=2),  # at least once
               dead_letter(Reason.CHECKSUM_MISMATCH, encoded(event()), offset=3)]
    assert [r.position.offset for r in select(records, reasons=["unreadable_uri"])] == [2]
    assert len(select(records)) == 2
    assert select(records, event_ids=[missing["event_id"]],
                  reasons=["checksum_mismatch"]) == []


def test_a_replayed_event_is_the_original_restamped_and_valid():
    original = event(sha256="a" * 64)
    decision = decide(dead_letter(Reason.UNREADABLE_URI, encoded(original)), NOW, {})
    assert decision.refused is None
    replayed = json.loads(decision.event)
    assert validation.errors(validation.IMAGE_EVENT, replayed) == []
    assert replayed["event_id"] == decision.new_event_id != original["event_id"]
    assert replayed["sent_at"] != original["sent_at"]
    assert {k: v for k, v in replayed.items() if k not in ("event_id", "sent_at")} == \
        {k: v for k, v in original.items() if k not in ("event_id", "sent_at")}
    assert decision.original_event_id == original["event_id"]


def test_binary_payloads_are_decoded_before_replay():
    payload = encoded(event()) + b"   "
    record = dead_letter(Reason.UNREADABLE_URI, payload)
    record.document["payload"].update(encoding="base64",
                                      data=base64.b64encode(payload).decode())
    assert decide(record, NOW, {}).refused is None


@pytest.mark.parametrize("reason", ["invalid_json", "schema_violation", "no_pixel_data",
                                    "unsupported_schema_version", "payload_too_large"])
def test_dead_letters_whose_event_is_at_fault_are_refused(reason):
    record = dead_letter(Reason(reason), encoded(event()))
    assert "is not replayed" in decide(record, NOW, {}).refused


def test_truncated_tampered_or_invalid_payloads_are_refused():
    big = encoded(event(sender="S" * 60))
    truncated = dead_letter(Reason.UNREADABLE_URI, big, payload_limit=100)
    assert "kept only part" in decide(truncated, NOW, {}).refused
    tampered = dead_letter(Reason.UNREADABLE_URI, encoded(event()))
    tampered.document["payload"]["data"] = tampered.document["payload"]["data"].replace(
        "/studies/x.dcm", "/etc/passwd")
    assert "sha256" in decide(tampered, NOW, {}).refused
    not_json = dead_letter(Reason.UNREADABLE_URI, b"{oops", event_id="e-1")
    assert "not valid JSON" in decide(not_json, NOW, {}).refused
    invalid = event()
    del invalid["uri"]
    refused = decide(dead_letter(Reason.UNREADABLE_URI, encoded(invalid)), NOW, {}).refused
    assert "not a valid event even after re-stamping (schema_violation" in refused


def test_a_dead_letter_already_replayed_is_not_replayed_again():
    record = dead_letter(Reason.UNREADABLE_URI, encoded(event()))
    earlier = {record.document["dead_letter_id"]: "new-event-1"}
    (decision,) = replay_plan([record], already_replayed=earlier, now_s=NOW)
    assert "already replayed as event new-event-1" in decision.refused


def test_replay_lines_name_what_was_replayed_and_why_others_were_not():
    good = decide(dead_letter(Reason.UNREADABLE_URI, encoded(event())), NOW, {})
    bad = decide(dead_letter(Reason.SCHEMA_VIOLATION, encoded(event()), offset=5), NOW, {})
    lines = replay_lines(ReplayReport(selected=2, replayed=[good], refused=[bad], dry_run=True))
    assert lines[0] == "2 dead letters selected: would replay 1, refused 1"
    assert "as a new event" in lines[1] and "dead-letters/0/5" in lines[2]


def test_since_reads_ages_and_times():
    assert parse_since("90m", now_s=NOW) == NOW - 5400
    assert parse_since("2h", now_s=NOW) == NOW - 7200
    assert parse_since("1d", now_s=NOW) == NOW - 86400
    assert parse_since("2026-11-26T08:00:00Z") == parse_since("2026-11-26T09:00:00+01:00")
    for wrong in ("yesterday", "2026-11-26T08:00:00", "5 weeks"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(wrong)

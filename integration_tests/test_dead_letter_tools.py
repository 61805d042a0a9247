"""medimg dead-letters on the real broker and job: list by reason, replay once fixed.

An image announced before it was written becomes an ``unreadable_uri`` dead letter;
once the file is there, replaying it yields a finding for a new event, and the
original keeps its one dead letter. What the sender got wrong is never replayed, a
replay is never repeated, and a dry run publishes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from scenarios.delivery import JOB_START_S
from streaming.kafka.reading import read_topic
from streaming.tools import dead_letter_tools
from streaming.local import phantoms
from streaming.kafka.admin import ensure_topics
from streaming.tools.modality import event_for_file, publish_events, publish_raw
from streaming.kafka.outcomes import OutcomeLog
from integration_tests.conftest import STUDY_IMAGE_SIZE



@pytest.fixture
def chest_image(tmp_path):
    cases = phantoms.generate_study_set(tmp_path / "written", 2, seed=4, size=STUDY_IMAGE_SIZE)
    return next(case.path for case in cases if case.expected_label is not None)


def read_events(kafka, topic):
    return list(read_topic(kafka, topic))


@pytest.mark.slow
def test_list_then_replay_an_image_that_was_not_there_yet(kafka, topics, start_job, tmp_path,
                                                          chest_image):
    late = tmp_path / "arrives-late" / "image.dcm"
    early = event_for_file(chest_image, sender="PACS")
    not_yet = dataclasses.replace(early, uri=str(late), sha256=None, event_id="late-image-1")
    changed = dataclasses.replace(early, sha256="0" * 64, event_id="changed-1")
    ensure_topics(kafka, {topics.events: 3, topics.findings: 3, topics.dead_letters: 3})
    job = start_job()
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, [not_yet, changed])
        publish_raw(kafka, topics.events, [b'{"schema_version": 1, "event_id": "oops"'])
        assert log.wait_for_count(3, JOB_START_S), job.log_tail()

        summary = dead_letter_tools.summarise(kafka, topics.dead_letters)
        assert {r: s.count for r, s in summary.by_reason.items()} == {
            "unreadable_uri": 1, "checksum_mismatch": 1, "invalid_json": 1}
        (example,) = summary.by_reason["unreadable_uri"].latest
        assert example.event_id == "late-image-1" and example.source["topic"] == topics.events
        assert not summary.by_reason["invalid_json"].replayable

        late.parent.mkdir()
        shutil.copyfile(chest_image, late)  # the cause is fixed
        chosen = ["unreadable_uri", "invalid_json"]
        events_before = len(read_events(kafka, topics.events))
        dry = dead_letter_tools.replay(kafka, topics.dead_letters, topics.events,
                                       reasons=chosen, dry_run=True)
        assert (len(dry.replayed), len(dry.refused)) == (1, 1)
        assert len(read_events(kafka, topics.events)) == events_before  # nothing published

        report = dead_letter_tools.replay(kafka, topics.dead_letters, topics.events,
                                          reasons=chosen)
        (replayed,) = report.replayed
        assert replayed.original_event_id == "late-image-1"
        (not_replayed,) = report.refused
        assert not_replayed.reason == "invalid_json" and "is not replayed" in not_replayed.refused
        assert log.wait_for([replayed.new_event_id], 60), job.log_tail()
        (finding,) = log.by_event[replayed.new_event_id]
        assert finding.kind == "finding" and finding.document["status"] == "scored"

        again = dead_letter_tools.replay(kafka, topics.dead_letters, topics.events,
                                         reasons=chosen)
        refused = {d.reason: d.refused for d in again.refused}
        assert again.replayed == [] and "already replayed" in refused["unreadable_uri"]

        # A cause not fixed yet: the new event gets its own dead letter, nothing else.
        still = dead_letter_tools.replay(kafka, topics.dead_letters, topics.events,
                                         event_ids=["changed-1"])
        (retried,) = still.replayed
        assert log.wait_for([retried.new_event_id], 60), job.log_tail()
        log.drain(quiet_s=2)
        assert job.stop() == 0

    (outcome,) = log.by_event[retried.new_event_id]
    assert outcome.document["reason"] == "checksum_mismatch"
    assert log.duplicates() == {} and len(log.outcomes) == 5
    replays = [r for r in read_events(kafka, topics.events) if r.headers]
    assert sorted(dict(r.headers)[dead_letter_tools.REPLAY_OF_EVENT].decode()
                  for r in replays) == ["changed-1", "late-image-1"]
    assert all(json.loads(r.value)["event_id"] not in ("changed-1", "late-image-1")
               for r in replays)

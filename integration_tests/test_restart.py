"""Stopping and restarting the real job: nothing lost; a drained stop repeats nothing."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from scenarios.delivery import JOB_START_S
from streaming.contracts import validation
from streaming.local import phantoms
from streaming.kafka.admin import ensure_topics
from streaming.tools.modality import event_for_file, publish_events
from streaming.kafka.outcomes import OutcomeLog
from integration_tests.conftest import STUDY_IMAGE_SIZE



@pytest.fixture
def study_events(tmp_path):
    cases = phantoms.generate_study_set(tmp_path / "studies", 16, seed=5, size=STUDY_IMAGE_SIZE)
    return [event_for_file(case.path, sender="TEST_MODALITY") for case in cases]


def announce_again(events, times):
    """The same images announced again: new events, each needing its own outcome."""
    from streaming.tools.modality import restamp  # noqa: PLC0415
    return [restamp(event) for _ in range(times) for event in events]


def test_drained_restart_loses_nothing_and_repeats_nothing(kafka, topics, start_job,
                                                           study_events):
    before_start = study_events[:8]
    while_running = announce_again(study_events, 3)
    while_stopped = announce_again(study_events[:6], 1)
    # Published before the job ever ran: a new consumer group starts from the earliest event.
    ensure_topics(kafka, {topics.events: 3})
    publish_events(kafka, topics.events, before_start)

    job = start_job()
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        assert log.wait_for([e.event_id for e in before_start], JOB_START_S), job.log_tail()
        publisher = threading.Thread(target=publish_events, args=(
            kafka, topics.events, while_running), kwargs={"rate_per_s": 20})
        publisher.start()
        # Stop in the middle of the stream: some of these events are in flight.
        assert log.wait_for_count(len(before_start) + len(while_running) // 3, 120)
        assert job.stop() == 0, job.log_tail()
        publisher.join()
        publish_events(kafka, topics.events, while_stopped)

        restarted = start_job()
        everything = before_start + while_running + while_stopped
        assert log.wait_for([e.event_id for e in everything], JOB_START_S), restarted.log_tail()
        log.drain(quiet_s=3)
        assert restarted.stop() == 0

    assert log.duplicates() == {}, "a drained job must commit everything it published"
    assert len(log.outcomes) == len(everything)
    assert log.undecodable == 0
    for outcome in log.outcomes:
        schema = validation.FINDING if outcome.kind == "finding" else validation.DEAD_LETTER
        assert validation.errors(schema, outcome.document, strict=True) == []


def event_ids(events) -> list[str]:
    return [event.event_id for event in events]


def test_killed_job_loses_nothing_after_restart(kafka, topics, start_job, study_events):
    warmup = announce_again(study_events[:4], 1)
    stream = announce_again(study_events, 3)
    burst = announce_again(study_events[:8], 1)
    after_kill = announce_again(study_events[8:], 1)
    # Created here, not by the job: the outcome log can open at once, however slow the
    # job is to start on a busy machine.
    ensure_topics(kafka, {topics.events: 3, topics.findings: 3, topics.dead_letters: 3})
    job = start_job()
    streamed = []
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, warmup)
        assert log.wait_for(event_ids(warmup), JOB_START_S), job.log_tail()  # up and scoring
        publisher = threading.Thread(target=publish_events, args=(
            kafka, topics.events, stream), kwargs={"rate_per_s": 20, "on_sent": streamed.append})
        publisher.start()
        assert log.wait_for_count(len(warmup) + 8, 120), job.log_tail()
        # Acknowledged by the broker an instant before the kill: the job cannot have
        # finished them, so the kill lands with events in flight, whatever the timing.
        publish_events(kafka, topics.events, burst)
        job.kill()  # SIGKILL mid-stream: nothing drained, offsets of in-flight events uncommitted
        sent_at_kill = len(warmup) + len(streamed) + len(burst)
        log.drain(quiet_s=1)  # every outcome the job published before it died
        outcomes_at_kill = len(log.by_event)
        assert outcomes_at_kill < sent_at_kill, "the kill did not land mid-stream"
        publisher.join()
        publish_events(kafka, topics.events, after_kill)

        restarted = start_job()
        everything = warmup + stream + burst + after_kill
        # Outcomes for events sent after the kill prove the restarted job is up before it
        # is asked to stop.
        assert log.wait_for(event_ids(everything), JOB_START_S), restarted.log_tail()
        log.drain(quiet_s=3)
        assert restarted.stop() == 0, restarted.log_tail()

    # At-least-once: a replayed event may be scored twice, but always alike. Not bit for
    # bit: the replay lands in another batch, and oneDNN's sums round by batch layout
    # (seen: 0.4566652 vs 0.4566654). The restart waits for the killed job's lease to
    # expire, so its first batches are fuller than before the kill.
    for event_id, count in log.duplicates().items():
        findings = [o.document for o in log.by_event[event_id]]
        assert len({f["finding_id"] for f in findings}) == 1
        first, *others = [f["scores"] for f in findings]
        for scores in others:
            assert scores.keys() == first.keys()
            assert all(abs(scores[k] - first[k]) < 1e-5 for k in first), (first, scores)
    assert set(event_ids(everything)) == set(log.by_event), "an outcome of no event"


def sigterm_is_handled(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_a_job_stopped_while_starting_exits_cleanly(start_job):
    job = start_job()
    deadline = time.monotonic() + 60
    while not sigterm_is_handled(job.pid) and time.monotonic() < deadline:
        assert job.running(), job.log_tail()
        time.sleep(0.01)
    assert sigterm_is_handled(job.pid), job.log_tail()
    assert job.stop() == 0, job.log_tail()
    assert "stop requested during start-up" in job.log_tail(200)

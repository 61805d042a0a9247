"""One job per consumer group: the lease in Kafka, its fencing, and two real jobs meeting."""

from __future__ import annotations


import pytest
from apache_beam.io.restriction_trackers import OffsetRange

from integration_tests.conftest import STUDY_IMAGE_SIZE
from integration_tests.test_kafka_source import Worker, group_offset, produce
from scenarios.delivery import JOB_START_S
from streaming.kafka.admin import ensure_topics
from streaming.kafka.lease import GroupLease, GroupLeaseHeld
from streaming.kafka.outcomes import OutcomeLog
from streaming.kafka.source import END_OF_TIME, PartitionToRead, ReaderSettings
from streaming.local import phantoms
from streaming.runtime import lifecycle
from streaming.tools.modality import event_for_file, publish_events


@pytest.fixture
def study_events(tmp_path):
    cases = phantoms.generate_study_set(tmp_path / "studies", 16, seed=7, size=STUDY_IMAGE_SIZE)
    return [event_for_file(case.path, sender="TEST_MODALITY") for case in cases]


@pytest.fixture
def lease_topic(topics):
    return f"leases-{topics.group}"


def pause(lease: GroupLease) -> None:
    """What SIGSTOP or a long GC pause does to a job: its heartbeats stop, nothing else."""
    lease._stop.set()  # noqa: SLF001
    lease._thread.join()  # noqa: SLF001


def test_a_second_holder_is_refused_while_the_first_beats(kafka, topics, lease_topic):
    first = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    second = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    try:
        first.acquire()
        with pytest.raises(GroupLeaseHeld, match="Stop that job first"):
            second.acquire(wait_s=2.5)  # longer than the ttl: the first keeps beating
        assert first.held()
    finally:
        first.release()
        second.release()
    # A clean stop gives the group up at once.
    third = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    try:
        third.acquire(wait_s=0)
    finally:
        third.release()


def test_a_paused_holder_is_fenced_by_the_next_one(kafka, topics, lease_topic):
    ensure_topics(kafka, {topics.events: 1})
    produce(kafka, topics.events, 20)
    old = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    new = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    element = PartitionToRead(topics.events, 0)
    old_token = old.acquire()
    reader = Worker(ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                                   max_records_per_bundle=10, lease_token=old_token))
    try:
        offsets, _ = reader.bundle(element, OffsetRange(0, END_OF_TIME))
        reader.settle(topics.events, offsets)
        pause(old)  # the old job stops beating with a bundle not yet finalized
        new_token = new.acquire(wait_s=5)  # takes over once the old lease expired
        assert new_token > old_token
        newer = Worker(ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                                      max_records_per_bundle=5, lease_token=new_token))
        try:
            offsets, _ = newer.bundle(element, OffsetRange(0, END_OF_TIME))
            newer.settle(topics.events, offsets)
            newer.finalize()
        finally:
            newer.close()
        assert group_offset(kafka, topics.group, topics.events) == 5
        # The old job wakes up and finalizes its bundle: it must not commit over the new one.
        assert not old.held()
        reader.finalize()
        assert group_offset(kafka, topics.group, topics.events) == 5
    finally:
        reader.close()
        new.release()
        old.release()


def test_a_holder_that_loses_its_lease_drains(kafka, topics, lease_topic):
    old = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    new = GroupLease(kafka, topics.group, lease_topic, ttl_s=1.0)
    try:
        old.acquire()
        pause(old)
        new.acquire(wait_s=5)
        old._stop.clear()  # noqa: SLF001 - the paused job resumes beating
        old._beat_once()  # noqa: SLF001
        assert lifecycle.drain_requested(), "a superseded job must stop"
        assert not old.held()
    finally:
        lifecycle._DRAIN.clear()  # noqa: SLF001 - this test's process keeps running
        new.release()
        old.release()


@pytest.mark.slow
def test_a_second_job_on_the_same_group_refuses_to_start(kafka, topics, start_job,
                                                         study_events):
    """As an operator would: `medimg stream` twice on one group."""
    ensure_topics(kafka, {topics.events: 6, topics.findings: 3, topics.dead_letters: 3})
    first_events, more_events = study_events[:8], study_events[8:]
    job = start_job()
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, first_events)
        assert log.wait_for([e.event_id for e in first_events], JOB_START_S), job.log_tail()
        second = start_job()
        assert second.process.wait(JOB_START_S) == 2, second.log_tail()
        assert "Stop that job first" in second.log_tail(50)
        publish_events(kafka, topics.events, more_events)
        assert log.wait_for([e.event_id for e in study_events], JOB_START_S), job.log_tail()
        log.drain(quiet_s=2)
        assert job.stop() == 0, job.log_tail()
    assert log.duplicates() == {}
    assert len(log.outcomes) == len(study_events)

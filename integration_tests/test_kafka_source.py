"""The partition reader where a runner splits, checkpoints and moves it between processes.

The local runner never splits the reader and runs every restriction in one process;
Dataflow and Flink do both. These tests drive ``ReadPartitions`` the way the SDK
harness does (a thread-safe tracker, split requests arriving between claims, the
checkpoint left by ``defer_remainder``) against the real embedded broker, with a fresh
reader and ledger standing for each worker process.
"""

from __future__ import annotations

import collections
import random
import threading
import time

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streaming.contracts.records import SourcePosition
from streaming.kafka.admin import ensure_topics
from streaming.kafka.ledger import OffsetLedger
from streaming.kafka.source import END_OF_TIME, PartitionToRead, ReaderSettings, ReadPartitions
from streaming.runtime import lifecycle


def produce(kafka, topic: str, count: int, partition: int = 0) -> None:
    producer = KafkaProducer(**kafka.client_kwargs())
    try:
        for index in range(count):
            producer.send(topic, f"record-{index}".encode(), partition=partition)
        producer.flush()
    finally:
        producer.close()


def group_offset(kafka, group: str, topic: str, partition: int = 0) -> int | None:
    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, partition))
    finally:
        consumer.close()


class Worker:
    """One worker process: its own reader instance and its own offset ledger."""

    def __init__(self, settings: ReaderSettings):
        self.reader = ReadPartitions(settings)
        self.reader.setup()
        self.reader._ledger = OffsetLedger()  # a process of its own: nothing shared
        self.finalizations = []

    @property
    def ledger(self) -> OffsetLedger:
        return self.reader._ledger

    def bundle(self, element, restriction, split_after=None, fraction=0.0):
        """Process one restriction as the SDK harness does -> (offsets, residuals)."""
        tracker = ThreadsafeRestrictionTracker(self.reader.create_tracker(restriction))
        finalizer = type("Finalizer", (), {"register": lambda _, f: self.finalizations.append(f)})()
        offsets, residuals = [], []
        outputs = self.reader.process(element, finalizer, RestrictionTrackerView(tracker),
                                      ManualWatermarkEstimator(None))
        for index, output in enumerate(outputs):
            offsets.append(output.value.position.offset)
            if index == split_after:  # the runner's split request, between two claims
                split = tracker.try_split(fraction)
                if split:
                    residuals.append(split[1])
        deferred = tracker.deferred_status()
        if deferred:
            residuals.append(deferred[0])
        return offsets, residuals

    def settle(self, topic, offsets, partition=0):
        """What the sink does once each record's outcome is acknowledged."""
        for offset in offsets:
            self.ledger.settle(SourcePosition(topic, partition, offset))

    def finalize(self):
        callbacks, self.finalizations = self.finalizations, []
        for callback in callbacks:
            callback()

    def close(self):
        self.reader.teardown()


@pytest.mark.parametrize("seed", [3, 11])
def test_random_splits_and_checkpoints_claim_every_offset_once(kafka, topics, seed):
    total = 60
    ensure_topics(kafka, {topics.events: 1})
    produce(kafka, topics.events, total)
    settings = ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                              max_records_per_bundle=7)
    element = PartitionToRead(topics.events, 0)
    rng = random.Random(seed)
    claims = collections.Counter()
    pending = collections.deque([OffsetRange(0, END_OF_TIME)])
    for _ in range(200):
        if len(claims) >= total:
            break
        worker = Worker(settings)  # each restriction may run in another process
        try:
            # Checkpoints (fraction 0) and fractional splits, as Dataflow and Flink ask.
            offsets, residuals = worker.bundle(
                element, pending.popleft(), split_after=rng.randrange(7),
                fraction=rng.choice([0.0, 0.5, rng.random()]))
        finally:
            worker.close()
        claims.update(offsets)
        pending.extend(residuals)
    assert len(pending) == 1, f"one partition is read by one live restriction: {pending}"
    assert sorted(claims) == list(range(total)), "an offset was skipped"
    assert {offset: n for offset, n in claims.items() if n > 1} == {}, "claimed twice"


def test_commits_never_move_backwards_across_processes(kafka, topics):
    ensure_topics(kafka, {topics.events: 1})
    produce(kafka, topics.events, 30)
    settings = ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                              max_records_per_bundle=10)
    element = PartitionToRead(topics.events, 0)
    first, second = Worker(settings), Worker(settings)
    try:
        offsets, (rest,) = first.bundle(element, OffsetRange(0, END_OF_TIME))
        assert offsets == list(range(10))
        first.settle(topics.events, offsets)
        # The runner resumes the partition in another process before the first one
        # finalizes its bundle (finalization comes late, after the checkpoint is durable).
        offsets, _ = second.bundle(element, rest)
        second.settle(topics.events, offsets)
        second.finalize()
        assert group_offset(kafka, topics.group, topics.events) == 20
        first.finalize()
        assert group_offset(kafka, topics.group, topics.events) == 20, "moved backwards"
    finally:
        first.close()
        second.close()


def test_a_bundle_failed_in_one_process_does_not_stop_its_commits(kafka, topics):
    ensure_topics(kafka, {topics.events: 1})
    produce(kafka, topics.events, 40)
    settings = ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                              max_records_per_bundle=10)
    element = PartitionToRead(topics.events, 0)
    first, second = Worker(settings), Worker(settings)
    try:
        failed, _ = first.bundle(element, OffsetRange(0, END_OF_TIME))  # then it fails
        assert failed == list(range(10))
        # The runner retries the restriction elsewhere, which reads on to offset 30.
        rest = OffsetRange(0, END_OF_TIME)
        for _ in range(3):
            offsets, (rest,) = second.bundle(element, rest)
            second.settle(topics.events, offsets)
            second.finalize()
        assert group_offset(kafka, topics.group, topics.events) == 30
        # Later the partition comes back to the first process.
        offsets, _ = first.bundle(element, rest)
        assert offsets == list(range(30, 40))
        first.settle(topics.events, offsets)
        first.finalize()
        assert group_offset(kafka, topics.group, topics.events) == 40
        assert first.ledger.outstanding(topics.events, 0) == 0
    finally:
        first.close()
        second.close()


def test_restriction_size_progress_and_a_gauge_show_the_partitions_lag(kafka, topics):
    from prometheus_client import REGISTRY  # noqa: PLC0415
    ensure_topics(kafka, {topics.events: 1})
    produce(kafka, topics.events, 50)
    settings = ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                              max_records_per_bundle=10)
    element = PartitionToRead(topics.events, 0)
    worker = Worker(settings)
    try:
        # Not checked before the first poll: Tansu answers ListOffsets(latest) with the last
        # batch's base offset + 1, so only the fetch's high watermark is right here.
        restriction = worker.reader.initial_restriction(element)
        offsets, (rest,) = worker.bundle(element, restriction)
        assert offsets == list(range(10))
        # What a runner that scales on backlog reads: 40 records still to read.
        assert worker.reader.restriction_size(element, rest) == 40
        progress = worker.reader.create_tracker(rest).current_progress()
        assert (progress.completed_work, progress.remaining_work) == (0, 40)
        lag = REGISTRY.get_sample_value("medimg_consumer_lag_records", {"partition": "0"})
        assert lag == 40
    finally:
        worker.close()


SEEN_BY_PARTITION: dict[int, set[int]] = collections.defaultdict(set)


def _note(record):
    SEEN_BY_PARTITION[record.position.partition].add(record.position.offset)


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_partitions_the_topic_gains_while_running_are_read(kafka, topics):
    """Tansu cannot add partitions to a topic (no CreatePartitions): the topic is deleted
    and created again with more, which the readers see the same way."""
    import apache_beam as beam  # noqa: PLC0415
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415
    from kafka import KafkaAdminClient  # noqa: PLC0415

    from streaming.kafka.source import ReadFromKafka  # noqa: PLC0415
    ensure_topics(kafka, {topics.events: 1})
    produce(kafka, topics.events, 5, partition=0)
    settings = ReaderSettings(kafka, topics.events, topics.group, poll_timeout_ms=200,
                              new_partitions=2, discovery_interval_s=0.5)
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner", "--streaming"]))
    _ = pipeline | "Read" >> ReadFromKafka(settings) | beam.Map(_note)
    SEEN_BY_PARTITION.clear()
    failures = []

    def run():
        try:
            pipeline.run().wait_until_finish()
        except Exception as error:  # noqa: BLE001 - reported by the test thread
            failures.append(error)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: len(SEEN_BY_PARTITION[0]) == 5, 120), failures
        admin = KafkaAdminClient(**kafka.client_kwargs())
        try:
            admin.delete_topics([topics.events])
        finally:
            admin.close()
        ensure_topics(kafka, {topics.events: 3})
        produce(kafka, topics.events, 4, partition=1)
        produce(kafka, topics.events, 3, partition=2)
        assert wait_until(lambda: (SEEN_BY_PARTITION[1], SEEN_BY_PARTITION[2]) == (
            set(range(4)), set(range(3))), 120), (dict(SEEN_BY_PARTITION), failures)
    finally:
        lifecycle.request_drain()
        runner.join(60)
        lifecycle._DRAIN.clear()  # noqa: SLF001 - this test's process keeps running
    assert not runner.is_alive() and failures == []

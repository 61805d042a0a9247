"""A native Python Kafka source for Beam: a splittable DoFn over topic partitions.

Beam's own ``ReadFromKafka`` is a cross-language transform whose Java expansion
service is downloaded from Maven at run time; hospitals and this build machine
cannot do that. This source uses kafka-python and only portable Beam primitives
(Impulse, ParDo, splittable DoFn), so the same graph runs on the local FnApiRunner,
Dataflow and Flink.

- One element per partition; its restriction is an offset range [next, infinity).
- The start is the consumer group's committed offset, or the earliest offset for
  a new group, so a restarted job resumes where it left off.
- Each bundle polls once, blocking in ``poll()`` while the partition is idle (the
  local runner ignores ``defer_remainder``'s delay, so a non-blocking read would spin).
- Offsets are committed from bundle finalization, which runs after the bundle's
  sinks have flushed: the committed offset is the ledger's highest contiguous
  settled offset, never moving backwards (at-least-once delivery).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streaming.runtime import lifecycle, metrics
from streaming.kafka.admin import BrokerUnavailable, partitions_of, wait_for_partitions
from streaming.kafka.config import KafkaConfig
from streaming.kafka.lease import lease_allows_commit
from streaming.kafka.ledger import ledger_for
from streaming.contracts.records import KafkaRecord, SourcePosition

LOG = logging.getLogger(__name__)

# An unbounded partition: offsets run to the end of time.
END_OF_TIME = sys.maxsize


@dataclasses.dataclass(frozen=True)
class PartitionToRead:
    topic: str
    partition: int


@dataclasses.dataclass(frozen=True)
class ReaderSettings:
    config: KafkaConfig
    topic: str
    group_id: str
    poll_timeout_ms: int = 300
    max_records_per_bundle: int = 256
    # The job's lease on the consumer group (streaming/kafka/lease.py): written into each
    # offset commit's metadata, so an older job never commits over a newer one.
    lease_token: int | None = None
    # Partitions the topic may gain while the job runs, read without a restart: the job
    # starts a reader for each of the next ``new_partitions`` numbers, idle until it exists.
    new_partitions: int = 8
    discovery_interval_s: float = 10.0


def _consumer(settings: ReaderSettings) -> KafkaConsumer:
    return KafkaConsumer(
        **settings.config.client_kwargs(),
        group_id=settings.group_id,
        enable_auto_commit=False,        # commits follow acknowledged outcomes only
        auto_offset_reset="earliest",    # a new group misses nothing
        fetch_max_wait_ms=100,
        max_poll_records=settings.max_records_per_bundle,
    )


def start_offset(consumer: KafkaConsumer, partition: TopicPartition) -> int:
    """The group's committed offset, else the partition's earliest offset."""
    committed = consumer.committed(partition)
    if committed is not None:
        return committed
    return consumer.beginning_offsets([partition])[partition]


# (topic, partition) -> the partition's end offset as this process last saw it: what
# restriction sizes and progress report as backlog, and the lag gauge shows.
_END_OFFSETS: dict[tuple[str, int], int] = {}


def end_offset(topic: str, partition: int) -> int | None:
    return _END_OFFSETS.get((topic, partition))


def _saw_end_offset(topic: str, partition: int, offset: int | None) -> None:
    if offset is not None:
        _END_OFFSETS[(topic, partition)] = offset


class PartitionOffsets(OffsetRange):
    """An offset range that knows its partition, so that its size and progress can
    report the partition's lag (a runner that scales on backlog reads them)."""

    def __init__(self, start: int, stop: int, topic: str, partition: int):
        super().__init__(start, stop)
        self.topic, self.partition = topic, partition

    def split_at(self, split_pos):
        return (PartitionOffsets(self.start, split_pos, self.topic, self.partition),
                PartitionOffsets(split_pos, self.stop, self.topic, self.partition))

    def lag(self, position: int | None = None) -> int | None:
        """Records from ``position`` (default: the start) to the partition's end."""
        end = end_offset(self.topic, self.partition)
        if end is None:
            return None
        position = self.start if position is None else position
        return max(min(end, self.stop) - position, 0)


class _UnboundedOffsetTracker(OffsetRestrictionTracker):
    """Offsets of one partition from ``start`` to the end of time: checkpoints only.

    A fractional split of [next, 2^63) would cut it near 4.6e18: the residual's reader
    would seek past the partition's end and read nothing forever (or, where the broker
    answers "out of range", be reset to the earliest offset and fail every claim). A partition is read in order by one reader
    anyway, so the runner may only checkpoint (fraction 0): the primary keeps what it
    claimed, the residual starts at the next offset.
    """

    def is_bounded(self):
        return False

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def current_progress(self) -> RestrictionProgress:
        restriction = self.current_restriction()
        position = (restriction.start if self._last_claim_attempt is None
                    else self._last_claim_attempt + 1)
        lag = restriction.lag(position) if isinstance(restriction, PartitionOffsets) else None
        if lag is None:  # end not seen yet: say nothing rather than 2^63 records to go
            return RestrictionProgress(completed=position - restriction.start, remaining=0)
        return RestrictionProgress(completed=position - restriction.start, remaining=lag)


class _PartitionClock(beam.WatermarkEstimatorProvider):
    """Watermark: record timestamps as they come (never ahead of now), now when idle."""

    def initial_estimator_state(self, element, restriction):
        return None

    def create_watermark_estimator(self, estimator_state):
        return ManualWatermarkEstimator(estimator_state)


class ReadPartitions(beam.DoFn, RestrictionProvider):
    """(topic, partition) -> every KafkaRecord of that partition, forever.

    The DoFn is its own restriction provider: restrictions are offset ranges over
    one partition, starting where the consumer group left off.
    """

    def __init__(self, settings: ReaderSettings):
        self._settings = settings

    # -- restrictions --------------------------------------------------------------

    def initial_restriction(self, element: PartitionToRead) -> OffsetRange:
        consumer = _consumer(self._settings)
        partition = TopicPartition(element.topic, element.partition)
        try:
            existing = wait_for_partitions(consumer, self._settings.config, element.topic)
        except BrokerUnavailable:
            consumer.close()
            raise
        if element.partition not in existing:
            consumer.close()
            # Not created yet: when it is, it starts empty, so read it from the beginning.
            return PartitionOffsets(0, END_OF_TIME, element.topic, element.partition)
        try:
            start = start_offset(consumer, partition)
            _saw_end_offset(element.topic, element.partition,
                            consumer.end_offsets([partition])[partition])
        finally:
            consumer.close()
        LOG.info("partition reader starts", extra={"topic": element.topic,
                                                   "partition": element.partition,
                                                   "offset": start})
        return PartitionOffsets(start, END_OF_TIME, element.topic, element.partition)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return _UnboundedOffsetTracker(restriction)

    def split(self, element, restriction):
        yield restriction  # a partition is read in order by one reader

    def restriction_size(self, element, restriction) -> int:
        # The backlog: records between the restriction's start and the partition's end.
        if not isinstance(restriction, PartitionOffsets):
            restriction = PartitionOffsets(restriction.start, restriction.stop,
                                           element.topic, element.partition)
        lag = restriction.lag()
        return 1 if lag is None else lag

    def truncate(self, element, restriction):
        return None  # on a runner's drain, stop reading: unread records stay in Kafka

    # -- reading -------------------------------------------------------------------

    def setup(self):
        self._existing: set[int] = set()
        self._checked_at: float | None = None
        self._consumers: dict[TopicPartition, KafkaConsumer] = {}
        self._next_offset: dict[TopicPartition, int] = {}
        self._locks: dict[TopicPartition, threading.Lock] = {}
        self._ledger = ledger_for(self._settings.group_id)

    def teardown(self):
        for consumer in getattr(self, "_consumers", {}).values():
            consumer.close(autocommit=False)

    def _assigned(self, partition: TopicPartition) -> KafkaConsumer:
        if partition not in self._consumers:
            consumer = _consumer(self._settings)
            consumer.assign([partition])
            self._consumers[partition] = consumer
            self._locks[partition] = threading.Lock()
        return self._consumers[partition]

    @beam.DoFn.unbounded_per_element()
    # BundleFinalizerParam must come before RestrictionParam: Beam 2.77 passes the
    # tracker positionally and the other order raises a TypeError.
    def process(self, element: PartitionToRead,
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(),
                watermark=beam.DoFn.WatermarkEstimatorParam(_PartitionClock())):
        partition = TopicPartition(element.topic, element.partition)
        if lifecycle.drain_requested():
            tracker.try_claim(END_OF_TIME)  # nothing more to read: the restriction is done
            return
        if not self._exists(partition):
            # A partition the topic may gain: nothing to read yet. Wait only if nothing else
            # here blocks in poll(), or the local runner would spin.
            if not self._consumers:
                time.sleep(self._settings.poll_timeout_ms / 1000)
            self._advance(watermark, Timestamp.of(time.time()))
            # Runners that honour the delay (Dataflow, Flink) look again after it.
            tracker.defer_remainder(Duration(seconds=self._settings.discovery_interval_s))
            return
        consumer = self._assigned(partition)
        start = tracker.current_restriction().start
        with self._locks[partition]:
            if self._next_offset.get(partition) != start:
                # Not where this process left off: the partition was read elsewhere
                # meanwhile, or a bundle is retried. (Where it left off, the previous
                # bundle may not be settled yet: nothing to forget.)
                self._ledger.resume_at(partition.topic, partition.partition, start)
                consumer.seek(partition, start)
            records = self._poll(consumer, partition)
            _saw_end_offset(partition.topic, partition.partition, consumer.highwater(partition))
        self._next_offset[partition] = start
        now = time.time()
        for record in records:
            if not tracker.try_claim(record.offset):
                # The runner split or checkpointed the restriction: the rest is read
                # again by the remainder. The consumer has already polled past it, so
                # the next call must seek rather than trust the position.
                self._next_offset.pop(partition, None)
                return
            self._next_offset[partition] = record.offset + 1
            position = SourcePosition(record.topic, record.partition, record.offset)
            self._ledger.read(position)
            timestamp = self._timestamp(watermark, record.timestamp, now)
            yield beam.window.TimestampedValue(
                KafkaRecord(position=position, key=record.key, value=record.value,
                            timestamp_ms=record.timestamp, received_at=now),
                timestamp)
        if not records:
            self._advance(watermark, Timestamp.of(now))
        self._report_lag(partition, self._next_offset[partition])
        finalizer.register(lambda: self._commit(partition))
        tracker.defer_remainder()

    def _exists(self, partition: TopicPartition) -> bool:
        if partition.partition in self._existing or partition in self._consumers:
            return True
        now = time.monotonic()
        if self._checked_at is None or now - self._checked_at >= self._settings.discovery_interval_s:
            self._checked_at = now
            try:
                self._existing = set(partitions_of(self._settings.config, partition.topic,
                                                   timeout_s=1.0))
            except BrokerUnavailable:
                return False  # the broker is away or the topic is gone: check again later
            if partition.partition in self._existing:
                LOG.info("new partition found; reading it", extra={
                    "topic": partition.topic, "partition": partition.partition})
        return partition.partition in self._existing

    def _poll(self, consumer: KafkaConsumer, partition: TopicPartition) -> list:
        # The runner hands this instance its partitions one after another in each bundle;
        # splitting the wait between them bounds an idle round to poll_timeout_ms, so a
        # record arriving on any partition waits at most about that long.
        timeout_ms = max(self._settings.poll_timeout_ms // len(self._consumers), 10)
        try:
            batches = consumer.poll(timeout_ms=timeout_ms,
                                    max_records=self._settings.max_records_per_bundle)
        except KafkaError as error:
            # The broker is away: kafka-python reconnects with backoff; try next bundle.
            LOG.warning("poll failed; will retry", extra={"topic": partition.topic,
                                                          "partition": partition.partition,
                                                          "error": type(error).__name__})
            time.sleep(self._settings.poll_timeout_ms / 1000)
            return []
        return batches.get(partition, [])

    @staticmethod
    def _report_lag(partition: TopicPartition, position: int) -> None:
        end = end_offset(partition.topic, partition.partition)
        if end is not None:
            metrics.gauge("consumer_lag_records", max(end - position, 0),
                          str(partition.partition))

    @staticmethod
    def _advance(watermark: ManualWatermarkEstimator, candidate: Timestamp) -> None:
        current = watermark.current_watermark()
        if current is None or candidate > current:
            watermark.set_watermark(candidate)

    def _timestamp(self, watermark, record_ms: int, now: float) -> Timestamp:
        # Producers set record timestamps; a skewed clock must not move time backwards
        # (behind the watermark) or ahead of now.
        timestamp = Timestamp.of(min(max(record_ms, 0) / 1000.0, now))
        current = watermark.current_watermark()
        if current is not None and timestamp < current:
            timestamp = current
        self._advance(watermark, timestamp)
        return timestamp

    def _commit(self, partition: TopicPartition) -> None:
        offset = self._ledger.to_commit(partition.topic, partition.partition)
        if offset is None:
            return
        try:
            with self._locks[partition]:
                consumer = self._consumers[partition]
                # Another process may have read (and committed) this partition since this
                # process last did, and another job may hold the group now: read the
                # group's offset fresh, commit only forward of it, and never over a newer
                # lease. Check and commit are not atomic; the lease keeps one job writing.
                current = consumer.committed(partition, metadata=True)
                verdict = commit_verdict(current, offset, self._settings.lease_token)
                if not lease_allows_commit(self._settings.lease_token):
                    verdict = "fenced"  # paused past the lease's expiry, or superseded
                if verdict == "commit":
                    consumer.commit({partition: OffsetAndMetadata(
                        offset, lease_metadata(self._settings.lease_token), -1)})
        except KafkaError as error:
            # Not fatal: the next bundle's finalization commits the same or a later offset.
            LOG.warning("offset commit failed; will retry", extra={
                "topic": partition.topic, "partition": partition.partition,
                "offset": offset, "error": type(error).__name__})
            return
        if verdict == "fenced":
            LOG.error("offset commit refused: another job holds this consumer group now; "
                      "stop this job", extra={"topic": partition.topic,
                                              "partition": partition.partition,
                                              "offset": offset,
                                              "lease_token": self._settings.lease_token})
            return
        self._ledger.committed(partition.topic, partition.partition,
                               offset if verdict == "commit" else current.offset)


LEASE_PREFIX = "medimg-lease:"


def lease_metadata(token: int | None) -> str:
    return "" if token is None else f"{LEASE_PREFIX}{token}"


def lease_of(metadata: str | None) -> int | None:
    if metadata and metadata.startswith(LEASE_PREFIX):
        try:
            return int(metadata[len(LEASE_PREFIX):])
        except ValueError:
            return None
    return None


def commit_verdict(current: OffsetAndMetadata | None, offset: int, token: int | None) -> str:
    """"commit", "behind" (the group is already at or past ``offset``), or "fenced"."""
    if current is not None:
        holder = lease_of(current.metadata)
        if token is not None and holder is not None and holder > token:
            return "fenced"
        if current.offset is not None and current.offset >= offset:
            return "behind"
    return "commit"


class _DiscoverPartitions(beam.DoFn):
    def __init__(self, settings: ReaderSettings):
        self._settings = settings

    def process(self, _impulse):
        partitions = partitions_of(self._settings.config, self._settings.topic)
        # Readers for partitions the topic may gain later. An upstream discovery step that
        # waits between metadata checks would be simpler, but Beam's local runner runs an
        # unbounded step to its end before the next stage gets any input: the readers
        # would never start.
        expected = max(partitions) + 1 + self._settings.new_partitions
        for partition in sorted({*partitions, *range(max(partitions) + 1, expected)}):
            yield PartitionToRead(self._settings.topic, partition)


class ReadFromKafka(beam.PTransform):
    """Unbounded PCollection of KafkaRecord from every partition of one topic."""

    def __init__(self, settings: ReaderSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pbegin):
        return (pbegin
                | "Start" >> beam.Impulse()
                | "DiscoverPartitions" >> beam.ParDo(_DiscoverPartitions(self._settings))
                | "ReadPartitions" >> beam.ParDo(ReadPartitions(self._settings)))

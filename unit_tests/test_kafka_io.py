"""Kafka I/O pieces that need no broker: the offset ledger, client settings, the graph."""

from __future__ import annotations

import threading
import types

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator

from streaming.kafka.config import KafkaConfig, KafkaConfigError
from streaming.kafka.ledger import OffsetLedger
from streaming.kafka.source import END_OF_TIME, PartitionToRead, ReaderSettings, ReadPartitions
from streaming.contracts.records import SourcePosition


def positions(*offsets, partition=0):
    return [SourcePosition("events", partition, o) for o in offsets]


def test_commit_waits_for_the_oldest_outstanding_record():
    ledger = OffsetLedger()
    for p in positions(10, 11, 12, 13):
        ledger.read(p)
    ledger.settle(SourcePosition("events", 0, 12))
    ledger.settle(SourcePosition("events", 0, 13))
    assert ledger.to_commit("events", 0) is None        # 10 and 11 are not settled yet
    ledger.settle(SourcePosition("events", 0, 10))
    assert ledger.to_commit("events", 0) == 11
    ledger.settle(SourcePosition("events", 0, 11))
    assert ledger.to_commit("events", 0) == 14          # the whole run is settled


def test_commits_never_move_backwards_and_are_not_repeated():
    ledger = OffsetLedger()
    for p in positions(0, 1):
        ledger.read(p)
        ledger.settle(p)
    assert ledger.to_commit("events", 0) == 2
    ledger.committed("events", 0, 2)
    assert ledger.to_commit("events", 0) is None
    # A replayed, already committed record settles again: nothing changes.
    ledger.read(SourcePosition("events", 0, 1))
    ledger.settle(SourcePosition("events", 0, 1))
    assert ledger.to_commit("events", 0) is None


def test_gaps_in_offsets_do_not_block_commits():
    ledger = OffsetLedger()  # compacted topics and transaction markers leave gaps
    for p in positions(3, 7, 20):
        ledger.read(p)
        ledger.settle(p)
    assert ledger.to_commit("events", 0) == 21


def test_partitions_are_independent():
    ledger = OffsetLedger()
    ledger.read(SourcePosition("events", 0, 5))
    ledger.read(SourcePosition("events", 1, 9))
    ledger.settle(SourcePosition("events", 1, 9))
    assert ledger.to_commit("events", 0) is None
    assert ledger.to_commit("events", 1) == 10
    assert ledger.outstanding("events", 0) == 1


def test_a_retried_bundle_rereading_earlier_offsets_keeps_order():
    ledger = OffsetLedger()
    for p in positions(5, 6, 7):
        ledger.read(p)
    ledger.read(SourcePosition("events", 0, 4))   # the runner retried from an older checkpoint
    for offset in (5, 6, 7):
        ledger.settle(SourcePosition("events", 0, offset))
    assert ledger.to_commit("events", 0) is None  # 4 still holds the commit back
    ledger.settle(SourcePosition("events", 0, 4))
    assert ledger.to_commit("events", 0) == 8


def test_settling_a_replay_of_committed_offsets_keeps_no_state():
    ledger = OffsetLedger()
    for p in positions(0, 1, 2):
        ledger.read(p)
        ledger.settle(p)
    assert ledger.to_commit("events", 0) == 3
    for p in positions(0, 1, 2):   # replayed (or skipped by dedup) after the commit
        ledger.read(p)
        ledger.settle(p)
    # Nothing would ever clear such offsets: a long replay would grow the ledger forever.
    assert ledger._ledger("events", 0).settled == set()
    assert ledger.outstanding("events", 0) == 0
    assert ledger.to_commit("events", 0) == 3


def test_secrets_come_from_the_environment_or_files_never_options(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    config = KafkaConfig("broker:9093", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                         ssl_cafile="/etc/ca.pem")
    settings = config.client_kwargs({"MEDIMG_KAFKA_SASL_USERNAME": "medimg",
                                     "MEDIMG_KAFKA_SASL_PASSWORD_FILE": str(password_file)})
    assert settings["sasl_plain_username"] == "medimg"
    assert settings["sasl_plain_password"] == "s3cret"
    assert settings["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(config)  # the config pickled into the graph holds no secret


def test_missing_credentials_say_which_variables_to_set():
    config = KafkaConfig("broker:9093", security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    with pytest.raises(KafkaConfigError, match="MEDIMG_KAFKA_SASL_PASSWORD"):
        config.client_kwargs({"MEDIMG_KAFKA_SASL_USERNAME": "medimg"})


@pytest.mark.parametrize("kwargs, message", [
    ({"security_protocol": "TLS"}, "security protocol"),
    ({"security_protocol": "SASL_SSL"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "KERBEROS"}, "SASL mechanism"),
])
def test_impossible_security_settings_are_refused(kwargs, message):
    with pytest.raises(KafkaConfigError, match=message):
        KafkaConfig("broker:9093", **kwargs)


def test_partition_restrictions_are_unbounded_offset_ranges():
    reader = ReadPartitions(ReaderSettings(KafkaConfig(), "events", "group"))
    tracker = reader.create_tracker(OffsetRange(42, END_OF_TIME))
    assert not tracker.is_bounded()
    assert tracker.try_claim(42) and tracker.try_claim(50)
    # Draining claims the end of time: the restriction is done, nothing is left over.
    assert not tracker.try_claim(END_OF_TIME)
    tracker.check_done()
    assert list(reader.split(None, OffsetRange(42, END_OF_TIME))) == [
        OffsetRange(42, END_OF_TIME)]


class _PartitionLog:
    """A consumer of one partition holding offsets 0..n-1: poll moves the position."""

    def __init__(self, n: int):
        self.records = [types.SimpleNamespace(topic="events", partition=0, offset=o, key=None,
                                              value=b"{}", timestamp=1_000) for o in range(n)]
        self.position = 0

    def seek(self, _partition, offset):
        self.position = offset

    def poll(self, timeout_ms, max_records):
        batch = self.records[self.position:self.position + max_records]
        self.position += len(batch)
        return {next(iter(self.assigned)): batch} if batch else {}

    def highwater(self, _partition):
        return len(self.records)  # the partition's end, as a fetch response reports it


class _CheckpointingTracker:
    """The runner checkpoints after ``claims`` claims, as Dataflow may mid-bundle."""

    def __init__(self, start: int, claims: int):
        self.start, self.claims = start, claims

    def current_restriction(self):
        return OffsetRange(self.start, END_OF_TIME)

    def try_claim(self, _offset):
        self.claims -= 1
        return self.claims >= 0

    def defer_remainder(self):
        pass


def reader_of_five_records(group: str, **settings):
    """A partition reader whose one partition holds offsets 0-4, and a bundle finalizer."""
    from kafka import TopicPartition  # noqa: PLC0415

    reader = ReadPartitions(ReaderSettings(KafkaConfig(), "events", group, **settings))
    reader.setup()
    log = _PartitionLog(5)
    partition = TopicPartition("events", 0)
    log.assigned = [partition]
    reader._consumers[partition], reader._locks[partition] = log, threading.Lock()
    return reader, types.SimpleNamespace(register=lambda _callback: None)


def test_records_polled_past_a_checkpoint_are_read_by_the_remainder():

    reader, finalizer = reader_of_five_records("checkpoint-test")

    def read(tracker):
        return [r.value.position.offset for r in reader.process(
            PartitionToRead("events", 0), finalizer, tracker, ManualWatermarkEstimator(None))]

    # The first call polls all five records but may claim only two.
    assert read(_CheckpointingTracker(0, claims=2)) == [0, 1]
    # The remainder starts at 2: records 2-4 were polled already and must not be lost.
    assert read(_CheckpointingTracker(2, claims=100)) == [2, 3, 4]


@pytest.mark.parametrize("brokers, replicas, min_insync", [
    (1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)])
def test_created_topics_survive_a_broker_loss_where_the_cluster_allows(brokers, replicas,
                                                                      min_insync):
    from streaming.kafka.admin import new_topics  # noqa: PLC0415
    topics = new_topics({"findings": 6, "dead-letters": 3}, brokers)
    assert [(t.name, t.num_partitions) for t in topics] == [("findings", 6), ("dead-letters", 3)]
    assert {t.replication_factor for t in topics} == {replicas}
    assert {t.topic_configs["min.insync.replicas"] for t in topics} == {str(min_insync)}


def test_consumer_lag_per_partition_is_what_the_reader_has_not_read_yet():
    from prometheus_client import REGISTRY  # noqa: PLC0415

    reader, finalizer = reader_of_five_records("lag-test", max_records_per_bundle=2)

    def read_and_lag(start):
        list(reader.process(PartitionToRead("events", 0), finalizer,
                            _CheckpointingTracker(start, claims=100), ManualWatermarkEstimator(None)))
        return REGISTRY.get_sample_value("medimg_consumer_lag_records", {"partition": "0"})

    assert read_and_lag(0) == 3
    assert read_and_lag(2) == 1
    assert read_and_lag(4) == 0


def test_a_restriction_start_forgets_offsets_a_failed_bundle_left_outstanding():
    ledger = OffsetLedger()
    for p in positions(0, 1, 2):
        ledger.read(p)              # this process's bundle fails; the runner retries it elsewhere
    ledger.resume_at("events", 0, 30)  # the partition comes back here at offset 30
    for p in positions(30, 31):
        ledger.read(p)
        ledger.settle(p)
    assert ledger.to_commit("events", 0) == 32
    assert ledger.outstanding("events", 0) == 0


def test_offsets_are_committed_only_forward_of_the_group_and_never_over_a_newer_lease():
    from kafka.structs import OffsetAndMetadata  # noqa: PLC0415

    from streaming.kafka.source import commit_verdict, lease_metadata  # noqa: PLC0415
    assert commit_verdict(None, 10, token=7) == "commit"
    assert commit_verdict(OffsetAndMetadata(20, "", -1), 10, token=7) == "behind"
    assert commit_verdict(OffsetAndMetadata(5, lease_metadata(7), -1), 10, token=7) == "commit"
    # A newer job (a larger token) committed last: the older one is fenced, even forward.
    assert commit_verdict(OffsetAndMetadata(5, lease_metadata(9), -1), 10, token=7) == "fenced"


def test_the_lease_log_gives_the_group_to_the_first_live_claim():
    from streaming.kafka.lease import replay  # noqa: PLC0415
    state = {}
    claim = {"kind": "claim", "ttl_ms": 1000, "token": None}
    replay(state, "g", {**claim, "job": "a"}, offset=1, timestamp_ms=10_000)
    replay(state, "g", {**claim, "job": "b"}, offset=2, timestamp_ms=10_500)  # a is alive
    assert (state["g"].job, state["g"].token) == ("a", 1)
    replay(state, "g", {"kind": "beat", "job": "a", "token": 1, "ttl_ms": 1000}, 3, 10_900)
    replay(state, "g", {**claim, "job": "b"}, offset=4, timestamp_ms=11_800)  # still alive
    assert state["g"].job == "a"
    replay(state, "g", {**claim, "job": "b"}, offset=5, timestamp_ms=12_000)  # a expired
    assert (state["g"].job, state["g"].token) == ("b", 5)
    replay(state, "g", {"kind": "beat", "job": "a", "token": 1, "ttl_ms": 1000}, 6, 12_100)
    assert state["g"].job == "b", "a paused job waking up does not get the group back"
    replay(state, "g", {"kind": "release", "job": "b", "token": 5, "ttl_ms": 1000}, 7, 12_200)
    assert "g" not in state

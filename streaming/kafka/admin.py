"""Topic housekeeping: the job creates the topics it needs when it starts."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from streaming.kafka.config import KafkaConfig

LOG = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """No broker answered; the message says where we looked and what to check."""


def _admin(config: KafkaConfig, timeout_s: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return KafkaAdminClient(**config.client_kwargs(), request_timeout_ms=10_000,
                                    bootstrap_timeout_ms=5_000)
        except KafkaTimeoutError:
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answered at {config.bootstrap_servers} within "
                    f"{timeout_s:.0f} s; start one (`medimg broker`) or pass "
                    "--bootstrap_servers") from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def replication_for(broker_count: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a topic the job creates.

    Three copies where the cluster has three brokers, and acks=all waits for all but
    one of them: one broker may fail without stopping producers, and a record the
    broker acknowledged survives that failure (with one copy, it would not).
    """
    replicas = max(1, min(3, broker_count))
    return replicas, max(1, min(2, replicas - 1))


def new_topics(partitions_by_topic: dict[str, int], broker_count: int) -> list[NewTopic]:
    replicas, min_insync = replication_for(broker_count)
    return [NewTopic(name, partitions, replicas,
                     topic_configs={"min.insync.replicas": str(min_insync)})
            for name, partitions in partitions_by_topic.items()]


def ensure_topics(config: KafkaConfig, partitions_by_topic: dict[str, int],
                  timeout_s: float = 60.0) -> None:
    """Create the topics that do not exist yet; existing topics are left as they are."""
    admin = _admin(config, timeout_s)
    try:
        existing = set(admin.list_topics())
        wanted = {name: partitions for name, partitions in partitions_by_topic.items()
                  if name not in existing}
        brokers = len(admin.describe_cluster()["brokers"]) if wanted else 0
        for topic in new_topics(wanted, brokers):
            try:
                admin.create_topics([topic])
                LOG.info("created topic", extra={
                    "topic": topic.name, "partitions": topic.num_partitions,
                    "replication_factor": topic.replication_factor,
                    "min_insync_replicas": topic.topic_configs["min.insync.replicas"]})
            except TopicAlreadyExistsError:
                pass  # another job or publisher created it meanwhile
    finally:
        admin.close()


def partitions_of(config: KafkaConfig, topic: str, timeout_s: float = 60.0) -> list[int]:
    """The partition numbers of a topic, waiting for its metadata to appear."""
    consumer = KafkaConsumer(**config.client_kwargs())
    try:
        return wait_for_partitions(consumer, config, topic, timeout_s)
    finally:
        consumer.close()


def wait_for_partitions(consumer: KafkaConsumer, config: KafkaConfig, topic: str,
                        timeout_s: float = 60.0) -> list[int]:
    """``partitions_of`` with a consumer the caller already holds (no second connection)."""
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return sorted(partitions)
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(f"topic {topic!r} has no partitions visible at "
                                        f"{config.bootstrap_servers} after {timeout_s:.0f} s")
            consumer.poll(timeout_ms=200)  # refreshes metadata
    except KafkaError as error:
        raise BrokerUnavailable(f"cannot read metadata of topic {topic!r} at "
                                f"{config.bootstrap_servers}: {error}") from error

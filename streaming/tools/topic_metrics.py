"""Topic offsets as Prometheus metrics, read from the brokers, never from the job.

The "events arriving but no outcomes" alert must still see events arrive when the job
itself is frozen, hung or gone: then the job's own /metrics page cannot answer. The
brokers can, so this exporter reads each topic's end offsets (and the consumer group's
committed offsets) at every scrape. It uses the metric names of the widely deployed
kafka_exporter (``kafka_topic_partition_current_offset``, ``kafka_consumergroup_lag``...),
so a site that already runs kafka_exporter scrapes that instead and the same rules apply.
Labels: topic and partition (names from configuration, no event data).
"""

from __future__ import annotations

import logging
import threading

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from streaming.kafka.admin import partitions_of
from streaming.kafka.config import KafkaConfig

LOG = logging.getLogger(__name__)


class TopicOffsets:
    """A Prometheus collector: end offsets of ``topics``, committed offsets and lag of ``group``."""

    def __init__(self, config: KafkaConfig, topics: list[str], group: str | None = None,
                 timeout_s: float = 10.0):
        self._topics = list(topics)
        self._group = group
        self._partitions = [TopicPartition(topic, p) for topic in self._topics
                            for p in partitions_of(config, topic, timeout_s)]
        self._lock = threading.Lock()  # one scrape at a time uses the consumer
        self._consumer = KafkaConsumer(**config.client_kwargs(), group_id=group,
                                       enable_auto_commit=False, request_timeout_ms=5_000)

    def collect(self):
        up = GaugeMetricFamily("kafka_up", "1 if the brokers answered this scrape")
        end = GaugeMetricFamily("kafka_topic_partition_current_offset",
                                "End offset of a topic partition", labels=["topic", "partition"])
        committed = GaugeMetricFamily(
            "kafka_consumergroup_current_offset", "Committed offset of the consumer group",
            labels=["consumergroup", "topic", "partition"])
        lag = GaugeMetricFamily("kafka_consumergroup_lag",
                                "End offset minus the consumer group's committed offset",
                                labels=["consumergroup", "topic", "partition"])
        try:
            with self._lock:
                ends = self._consumer.end_offsets(self._partitions)
                commits = ({tp: self._consumer.committed(tp) for tp in self._partitions}
                           if self._group else {})
        except KafkaError as error:
            # No offsets rather than stale ones: the series go absent, kafka_up says why.
            LOG.warning("cannot read topic offsets", extra={"error": type(error).__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for tp, offset in sorted(ends.items()):
            end.add_metric([tp.topic, str(tp.partition)], offset)
            if commits.get(tp) is not None:
                labels = [self._group, tp.topic, str(tp.partition)]
                committed.add_metric(labels, commits[tp])
                lag.add_metric(labels, max(offset - commits[tp], 0))
        yield from (up, end, committed, lag)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def serve_topic_offsets(collector: TopicOffsets, port: int, host: str = "127.0.0.1"):
    """Serve ``collector`` on http://host:port/metrics (its own registry); returns the server."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    LOG.info("topic offsets endpoint", extra={"host": host, "port": port, "path": "/metrics"})
    return server

"""Reading a topic from a point in time (or the beginning) to its current end.

For the tools that count or settle outcomes from the topics (reconcile, dead-letter
replay, the restart settlement of dedup claims). "The end" is where each partition's
reported end offset is reached and then one more poll brings nothing: the embedded
broker (Tansu) reports a partition's end as its last batch's first offset + 1, short
of the records after it in that batch, so end offsets alone would miss records.
"""

from __future__ import annotations

import time
from typing import Iterator

from kafka import KafkaConsumer, TopicPartition

from streaming.kafka.admin import wait_for_partitions
from streaming.kafka.config import KafkaConfig


def read_topic(config: KafkaConfig, topic: str, since_ms: int | None = None,
               timeout_s: float = 300.0) -> Iterator:
    """Every record (kafka-python ConsumerRecord) of ``topic`` from ``since_ms``
    (epoch milliseconds; None: the beginning) to its current end."""
    consumer = KafkaConsumer(**config.client_kwargs(), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p)
                      for p in wait_for_partitions(consumer, config, topic)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        for tp, start in _start_offsets(consumer, partitions, ends, since_ms).items():
            consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s:.0f} s")
            batches = consumer.poll(timeout_ms=500)
            for records in batches.values():
                yield from records
            if not batches and all(consumer.position(tp) >= ends[tp] for tp in partitions):
                return
    finally:
        consumer.close(autocommit=False)


def _start_offsets(consumer: KafkaConsumer, partitions: list[TopicPartition], ends: dict,
                   since_ms: int | None) -> dict[TopicPartition, int]:
    if since_ms is None:
        return consumer.beginning_offsets(partitions)
    found = consumer.offsets_for_times({tp: since_ms for tp in partitions})
    return {tp: found[tp].offset if found.get(tp) is not None else ends[tp]
            for tp in partitions}

"""Accounting of outcomes: which events got a finding or a dead letter, read from the topics.

An independent view of delivery, built only from what is in the findings and
dead-letter topics (never from the job's own counters). Used by the demo, the
tests and the benchmarks to check "one event, one outcome".
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Callable, Iterable, Iterator

from kafka import KafkaConsumer, TopicPartition

from streaming.kafka.admin import wait_for_partitions
from streaming.delivery.dedup import outcome_identity
from streaming.kafka.config import KafkaConfig


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str                # "finding" or "dead_letter"
    event_id: str | None     # None for dead letters of unreadable events
    document: dict
    received_at: float       # when this reader saw it (epoch seconds)

    @property
    def payload_sha256(self) -> str | None:
        return self.document.get("payload", {}).get("sha256") if self.kind == "dead_letter" else None


class OutcomeLog:
    """Follows the findings and dead-letter topics from the beginning."""

    def __init__(self, config: KafkaConfig, findings_topic: str, dead_letter_topic: str):
        self._kinds = {findings_topic: "finding", dead_letter_topic: "dead_letter"}
        self._consumer = KafkaConsumer(**config.client_kwargs(), enable_auto_commit=False)
        partitions = [TopicPartition(topic, p) for topic in self._kinds
                      for p in wait_for_partitions(self._consumer, config, topic)]
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)
        self.outcomes: list[Outcome] = []
        self.by_event: dict[str | None, list[Outcome]] = collections.defaultdict(list)
        self.undecodable = 0  # records that are not JSON: a contract breach, must stay 0

    def poll(self, timeout_ms: int = 200) -> list[Outcome]:
        new = []
        for batch in self._consumer.poll(timeout_ms=timeout_ms).values():
            for record in batch:
                try:
                    document = json.loads(record.value)
                except ValueError:
                    self.undecodable += 1
                    continue
                outcome = Outcome(self._kinds[record.topic], document.get("event_id"),
                                  document, time.time())
                new.append(outcome)
                self.outcomes.append(outcome)
                self.by_event[outcome.event_id].append(outcome)
        return new

    def settled(self, event_ids: Iterable[str]) -> set[str]:
        return {e for e in event_ids if self.by_event.get(e)}

    def wait_for(self, event_ids: Iterable[str], timeout_s: float,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 extra_dead_letters: int = 0) -> bool:
        """Poll until every event has an outcome (plus ``extra_dead_letters`` without an
        event_id), or the timeout passes. True when all arrived."""
        wanted = set(event_ids)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for outcome in self.poll():
                if on_outcome:
                    on_outcome(outcome)
            if (len(self.settled(wanted)) == len(wanted)
                    and len(self.by_event.get(None, [])) >= extra_dead_letters):
                return True
        return False

    def wait_for_count(self, count: int, timeout_s: float) -> bool:
        """Poll until at least ``count`` outcomes have arrived in all, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count and time.monotonic() < deadline:
            self.poll()
        return len(self.outcomes) >= count

    def drain(self, quiet_s: float = 2.0) -> None:
        """Read until nothing new arrives for ``quiet_s`` (to catch late duplicates)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if self.poll():
                last = time.monotonic()

    def duplicates(self) -> dict[str, int]:
        """event_id -> number of outcomes, for events with more than one."""
        return {e: len(o) for e, o in self.by_event.items() if e is not None and len(o) > 1}

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def __enter__(self) -> "OutcomeLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def read_outcomes(config: KafkaConfig, findings_topic: str, dead_letter_topic: str,
                  since_ms: int | None = None) -> Iterator[tuple[str, str | None, dict | None]]:
    """(kind, identity, document) for every record of the findings and dead-letter topics
    from ``since_ms`` (None: the beginning) to their ends; identity and document are None
    for a record that is not an outcome of ours."""
    from streaming.kafka.reading import read_topic  # noqa: PLC0415
    for kind, topic in (("finding", findings_topic), ("dead_letter", dead_letter_topic)):
        for record in read_topic(config, topic, since_ms=since_ms):
            try:
                document = json.loads(record.value)
                yield kind, outcome_identity(kind, document), document
            except (ValueError, KeyError, TypeError):
                yield kind, None, None


def outcome_identities(config: KafkaConfig, findings_topic: str, dead_letter_topic: str,
                       since_s: float) -> set[str]:
    """Identities of every finding and dead letter published since ``since_s`` (epoch s):
    the tail a restarted job (or a sink after an ambiguous timeout) must know."""
    return {name for _kind, name, _document in read_outcomes(
        config, findings_topic, dead_letter_topic, since_ms=int(since_s * 1000))
        if name is not None}  # records not of ours: nothing to settle

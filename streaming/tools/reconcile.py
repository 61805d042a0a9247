"""``medimg reconcile``: did every event get exactly one finding or dead letter?

An independent count, made only from the topics (never from the job's own counters):
it reads the events, findings and dead-letter topics from the beginning up to their
current ends, and matches events to outcomes by identity: the ``event_id`` as the job
reads it (``parse_event``), or the source position for an event the job could not
read (its dead letter names that position).
"""

from __future__ import annotations

import collections
import dataclasses

from streaming.delivery.dedup import identity
from streaming.contracts.events import (DEFAULT_MAX_EVENT_BYTES, EventRejected,
                                       event_fingerprint, parse_event)
from streaming.contracts.reasons import Reason
from streaming.kafka.config import KafkaConfig
from streaming.kafka.reading import read_topic
from streaming.kafka.outcomes import read_outcomes
from streaming.contracts.records import SourcePosition


@dataclasses.dataclass
class Reconciliation:
    events: int                      # distinct events (by identity)
    event_records: int               # records in the events topic (a resend counts twice)
    findings: int
    dead_letters: int
    lost: list[str]                  # events without any outcome
    duplicated: dict[str, int]       # events with more than one outcome
    unmatched_outcomes: int          # outcomes for events not in the events topic
    dead_letter_reasons: dict[str, int]
    conflicts: dict[str, int] = dataclasses.field(default_factory=dict)  # event_id -> contents
    unflagged_conflicts: list[str] = dataclasses.field(default_factory=list)  # no dead letter

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated and not self.unflagged_conflicts

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        document.update(lost=len(self.lost), duplicated=len(self.duplicated),
                        conflicts=len(self.conflicts),
                        conflict_examples=dict(list(self.conflicts.items())[:20]),
                        lost_examples=self.lost[:20],
                        duplicated_examples=dict(list(self.duplicated.items())[:20]), ok=self.ok)
        return document


def event_identity(position: SourcePosition, payload: bytes, max_event_bytes: int) -> str:
    """The identity the job gives this event record (see streaming/dedup.py)."""
    try:
        return identity(parse_event(payload, max_event_bytes).event_id, position)
    except EventRejected as rejected:
        return identity(rejected.event_id, position)


def reconcile(config: KafkaConfig, events_topic: str, findings_topic: str,
              dead_letter_topic: str,
              max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Reconciliation:
    events: collections.Counter = collections.Counter()
    contents = collections.defaultdict(set)  # identity -> fingerprints of its records
    for record in read_topic(config, events_topic):
        name = event_identity(SourcePosition(record.topic, record.partition, record.offset),
                              record.value, max_event_bytes)
        events[name] += 1
        fingerprint = event_fingerprint(record.value)
        if fingerprint and not name.startswith("pos:"):
            contents[name].add(fingerprint)
    outcomes: collections.Counter = collections.Counter()
    conflict_letters: collections.Counter = collections.Counter()
    counts = collections.Counter()
    reasons = collections.Counter()
    for kind, name, document in read_outcomes(config, findings_topic, dead_letter_topic):
        if name is None:
            counts["unreadable"] += 1
            continue
        counts[kind] += 1
        if kind == "dead_letter":
            reasons[document.get("reason", "?")] += 1
            if document.get("reason") == Reason.EVENT_ID_CONFLICT:
                conflict_letters[document.get("event_id")] += 1
                continue
        outcomes[name] += 1
    conflicts = {name: len(found) for name, found in contents.items() if len(found) > 1}
    return Reconciliation(
        events=len(events), event_records=sum(events.values()), findings=counts["finding"],
        dead_letters=counts["dead_letter"],
        lost=sorted(name for name in events if name not in outcomes),
        duplicated={name: n for name, n in outcomes.items() if n > 1 and name in events},
        unmatched_outcomes=sum(n for name, n in outcomes.items() if name not in events),
        dead_letter_reasons=dict(sorted(reasons.items())),
        conflicts=conflicts,
        unflagged_conflicts=sorted(name for name in conflicts if not conflict_letters[name]))

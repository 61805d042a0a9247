"""Values that flow through the streaming job, from a Kafka record to an outbound record.

Every step keeps the source position of the record it came from: dead letters
report it, and offsets are committed only once the record's outcome is acknowledged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt


@dataclasses.dataclass(frozen=True)
class SourcePosition:
    """Where a record was read: the unit of offset accounting."""
    topic: str
    partition: int
    offset: int

    def to_dict(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclasses.dataclass(frozen=True)
class KafkaRecord:
    """One consumed record, as read from the events topic."""
    position: SourcePosition
    key: bytes | None
    value: bytes
    timestamp_ms: int
    received_at: float  # epoch seconds, when this job read it


@dataclasses.dataclass(frozen=True)
class OutboundRecord:
    """A finding or dead letter ready to publish, and the consumed record it settles."""
    kind: str  # "finding" or "dead_letter"
    key: bytes
    value: bytes
    source: SourcePosition
    # The consumed event, kept so the sink can still dead-letter it if the broker
    # refuses the finding itself (e.g. a record over the size limit).
    source_payload: bytes
    event_id: str | None = None
    # What its dedup claim is keyed by, when not the event (a conflict dead letter).
    dedup_identity: str | None = None
    # When the sender sent the event (epoch seconds), if the event said so: the start
    # of the end-to-end latency the sink measures at the broker's acknowledgement.
    sent_at_epoch: float | None = None

    FINDING = "finding"
    DEAD_LETTER = "dead_letter"


def utc_iso(epoch_seconds: float) -> str:
    """RFC 3339 timestamp with milliseconds, as the schemas expect."""
    return dt.datetime.fromtimestamp(epoch_seconds, dt.timezone.utc).isoformat(
        timespec="milliseconds")

"""Image events: what a modality or PACS sends when an image is ready to be read.

``parse_event`` turns a consumed Kafka record into an ``ImageEvent`` or raises
``EventRejected`` with the dead-letter reason. The contract is
schemas/image_event.v1.json; ``new_event`` builds events for publishers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import datetime as dt
import json
import time
import uuid

from streaming.contracts import validation
from streaming.contracts.reasons import Reason
from streaming.contracts.records import KafkaRecord, utc_iso

SCHEMA_VERSION = 1
DEFAULT_MAX_EVENT_BYTES = 64 * 1024


class EventRejected(Exception):
    def __init__(self, reason: Reason, message: str, event_id: str | None = None,
                 study_instance_uid: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.event_id = event_id
        self.study_instance_uid = study_instance_uid


@dataclasses.dataclass(frozen=True)
class ImageEvent:
    event_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str
    uri: str
    content_type: str
    sent_at: str
    sender: str
    priority: str
    sha256: str | None = None
    body_part_examined: str | None = None

    @property
    def urgent(self) -> bool:
        return self.priority == "urgent"

    @property
    def sent_at_epoch(self) -> float:
        return rfc3339_epoch(self.sent_at)

    def to_document(self) -> dict:
        document = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}
        return {k: v for k, v in document.items() if v is not None}

    def to_json(self) -> bytes:
        return json.dumps(self.to_document(), separators=(",", ":")).encode("utf-8")


def rfc3339_epoch(text: str) -> float:
    """Epoch seconds of an RFC 3339 date-time, whose 'T' and 'Z' may be lower case."""
    return dt.datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp()


_EVENT_FIELDS = frozenset(field.name for field in dataclasses.fields(ImageEvent))


def parse_event(payload: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> ImageEvent:
    """Bytes from the events topic -> a valid ImageEvent, or EventRejected saying why."""
    if payload is None:
        raise EventRejected(Reason.INVALID_JSON,
                            "the record has no value (a tombstone); an event is a JSON "
                            "object")
    if len(payload) > max_bytes:
        raise EventRejected(Reason.PAYLOAD_TOO_LARGE,
                            f"event is {len(payload)} bytes; the limit is {max_bytes} "
                            "(--max_event_bytes). Events carry a URI, never the image itself.")
    try:
        # Decoded as UTF-8 explicitly: json.loads would also guess UTF-16 and UTF-32.
        document = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise EventRejected(Reason.INVALID_JSON,
                            f"event is not valid UTF-8 JSON ({type(error).__name__}"
                            f"{_position(error)})") from None
    if not isinstance(document, dict):
        raise EventRejected(Reason.SCHEMA_VIOLATION,
                            f"event must be a JSON object, got {type(document).__name__}")
    event_id = document.get("event_id") if isinstance(document.get("event_id"), str) else None
    study = (document.get("study_instance_uid")
             if isinstance(document.get("study_instance_uid"), str) else None)
    version = document.get("schema_version")
    if version != SCHEMA_VERSION and "schema_version" in document:
        raise EventRejected(Reason.UNSUPPORTED_SCHEMA_VERSION,
                            f"event schema_version {json.dumps(version)[:20]} is not supported; "
                            f"this job reads version {SCHEMA_VERSION}",
                            _safe_id(event_id), _safe_uid(study))
    problems = validation.violated_fields(validation.IMAGE_EVENT, document)
    if problems:
        raise EventRejected(Reason.SCHEMA_VIOLATION,
                            "event breaks schemas/image_event.v1.json: " + "; ".join(problems),
                            _safe_id(event_id), _safe_uid(study))
    event = ImageEvent(**{k: v for k, v in document.items() if k in _EVENT_FIELDS})
    _check_sent_at(event)
    return event


def _check_sent_at(event: ImageEvent) -> None:
    """Findings compute latency from sent_at: refuse here what cannot be read as a time.

    The schema's date-time format already admits only RFC 3339; this holds even where
    jsonschema runs without its format checker installed.
    """
    try:
        event.sent_at_epoch
    except (ValueError, OverflowError):
        raise EventRejected(Reason.SCHEMA_VIOLATION,
                            "event breaks schemas/image_event.v1.json: sent_at: format "
                            "(an RFC 3339 date-time with a time zone)",
                            _safe_id(event.event_id), _safe_uid(event.study_instance_uid)
                            ) from None


def _no_constants(name: str):
    """NaN and Infinity are not JSON (Python's json accepts them by default)."""
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _position(error: Exception) -> str:
    return f" at line {error.lineno} column {error.colno}" if isinstance(
        error, json.JSONDecodeError) else ""


def _safe_id(value: str | None) -> str | None:
    """An event_id fit to copy into a dead letter (the schema bounds its length)."""
    return value if value and len(value) <= 128 else None


def _safe_uid(value: str | None) -> str | None:
    return value if value and len(value) <= 64 else None


def new_event(*, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str,
              modality: str, uri: str, content_type: str, sender: str,
              priority: str = "routine", sha256: str | None = None,
              body_part_examined: str | None = None, event_id: str | None = None) -> ImageEvent:
    """A new event stamped now, with a fresh event_id unless one is given."""
    return ImageEvent(
        event_id=event_id or str(uuid.uuid4()),
        study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid, modality=modality, uri=uri,
        content_type=content_type,
        sent_at=utc_iso(time.time()),
        sender=sender, priority=priority, sha256=sha256, body_part_examined=body_part_examined)


@dataclasses.dataclass(frozen=True)
class ReceivedEvent:
    """A valid event and the Kafka record it came in, carried to its finding or dead letter."""
    event: ImageEvent
    record: KafkaRecord


# What makes an event that event: an honest re-send (new sent_at) keeps it, a reused
# event_id naming another image does not.
_IDENTIFYING_FIELDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "uri",
                       "sha256")


def event_fingerprint(payload: bytes | None) -> str | None:
    """A digest of an event's identifying fields (None when it is not a JSON object)."""
    try:
        document = json.loads(payload)
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    fields = [document.get(name) for name in _IDENTIFYING_FIELDS]
    canonical = json.dumps(fields, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()[:32]

"""``medimg dead-letters``: what went wrong, by reason, and replaying what was fixed.

Inputs: the dead-letter topic (and, for replay, the events topic). Outputs: a
``DeadLetterSummary`` (count per reason, the latest examples with their event id,
message and source position), or a ``ReplayReport``: which dead letters were
re-published as new events and which were refused, and why.

Replaying re-publishes the *original event* a dead letter carries as a **new
event**: a fresh ``event_id`` and ``sent_at``, so it gets its own single outcome
and neither one-event-one-outcome accounting nor duplicate suppression by
event_id is confused. The event schema has no room for provenance, so the original
event_id and the dead letter's id travel as Kafka record headers
(``medimg-replay-of-event``, ``medimg-replay-of-dead-letter``) and in the log.

Which dead letters may be replayed (``REPLAY_RULES``): those whose cause lies
outside the event and can be fixed, namely the file (not there yet, still being
written or copied, unreadable), the job's configuration (roots, limits) or the
model, and the broker's size limit for findings. Never those where the event itself
is wrong (invalid JSON, schema violation, unknown schema version, too large): the
sender must send a corrected event; nor ``no_pixel_data``, an object that is not an
image (a report, a waveform) and never will be. A dead letter is also refused when
its payload was truncated, does not match its digest, is not JSON, or is not a
valid event even after re-stamping; and when it was already replayed (a record
on the events topic carries its id), so running the same replay twice does not
score an image twice: replay the replay's own dead letter instead if it failed too.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import time
import uuid
from typing import Iterable

from kafka import KafkaProducer

from streaming.contracts.events import DEFAULT_MAX_EVENT_BYTES, EventRejected, parse_event
from streaming.kafka.config import KafkaConfig
from streaming.kafka.reading import read_topic
from streaming.contracts.reasons import Reason
from streaming.contracts.records import SourcePosition, utc_iso

LOG = logging.getLogger(__name__)

REPLAY_OF_EVENT = "medimg-replay-of-event"
REPLAY_OF_DEAD_LETTER = "medimg-replay-of-dead-letter"

# reason -> (replayable, what to do first); every reason of the schema is listed.
REPLAY_RULES: dict[str, tuple[bool, str]] = {
    Reason.UNREADABLE_URI.value: (True, "replay once the file exists and the job can read it"),
    Reason.URI_NOT_ALLOWED.value: (True, "replay after adding the file's folder to "
                                         "--allowed_roots (the job checks the URI again)"),
    Reason.CHECKSUM_MISMATCH.value: (True, "replay once the file is final (it changed after "
                                           "the event was sent)"),
    Reason.FILE_TOO_LARGE.value: (True, "replay after raising --max_file_bytes"),
    Reason.OVER_SIZE_LIMITS.value: (True, "replay after raising --max_frame_pixels or "
                                          "--max_frames"),
    Reason.NOT_AN_IMAGE.value: (True, "replay once the file is complete (a partial copy "
                                      "reads as truncated)"),
    Reason.UNDECODABLE_PIXEL_DATA.value: (True, "replay once the file is complete or a "
                                                "decoder for it is installed"),
    Reason.INFERENCE_FAILURE.value: (True, "replay after fixing or rolling back the model"),
    Reason.FINDING_TOO_LARGE.value: (True, "replay after raising the findings topic's "
                                           "max.message.bytes"),
    Reason.NO_PIXEL_DATA.value: (False, "not an image (a report, waveform or presentation "
                                        "state): nothing will ever score it"),
    Reason.INVALID_JSON.value: (False, "the event itself is not JSON: the sender must send "
                                       "a corrected event"),
    Reason.SCHEMA_VIOLATION.value: (False, "the event itself breaks the schema: the sender "
                                           "must send a corrected event"),
    Reason.UNSUPPORTED_SCHEMA_VERSION.value: (False, "the event is of a schema version this "
                                                     "job does not read"),
    Reason.PAYLOAD_TOO_LARGE.value: (False, "the event itself is too large: the sender must "
                                            "send a smaller one"),
    Reason.EVENT_ID_CONFLICT.value: (False, "the event reuses another event's event_id: the "
                                            "sender must send it again with its own event_id"),
    # The reporter's own dead letters hold a finding, not an event: re-run `medimg report`
    # over the findings topic once the cause is fixed (its reports are idempotent).
    Reason.REPORT_SOURCE_UNAVAILABLE.value: (False, "store the source image in the PACS, then "
                                                    "run medimg report again"),
    Reason.REPORT_PACS_UNAVAILABLE.value: (False, "run medimg report again once the PACS is up"),
    Reason.REPORT_FAILED.value: (False, "fix the cause named in the message, then run medimg "
                                        "report again"),
}


# -- reading topics ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DeadLetterRecord:
    """One record of the dead-letter topic: where it is, and its document (None: not JSON)."""
    position: SourcePosition
    document: dict | None
    timestamp_ms: int

    @property
    def reason(self) -> str | None:
        return self.document.get("reason") if self.document else None


def read_dead_letters(config: KafkaConfig, topic: str, since_s: float | None = None
                      ) -> list[DeadLetterRecord]:
    """The dead letters in ``topic``, oldest first per partition."""
    since_ms = None if since_s is None else int(since_s * 1000)
    return [DeadLetterRecord(SourcePosition(r.topic, r.partition, r.offset), _document(r.value),
                             r.timestamp) for r in read_topic(config, topic, since_ms)]


def _document(value: bytes | None) -> dict | None:
    try:
        document = json.loads(value)
    except (TypeError, ValueError):
        return None
    return document if isinstance(document, dict) and "reason" in document else None


# -- summary ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Example:
    event_id: str | None
    message: str
    source: dict           # topic, partition, offset of the event
    created_at: str
    stage: str


@dataclasses.dataclass
class ReasonSummary:
    reason: str
    count: int
    replayable: bool
    advice: str
    latest: list[Example]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DeadLetterSummary:
    total: int
    unreadable: int        # records that are not dead letters at all
    by_reason: dict[str, ReasonSummary]

    def to_dict(self) -> dict:
        return {"total": self.total, "unreadable": self.unreadable,
                "by_reason": {r: s.to_dict() for r, s in self.by_reason.items()}}


def summarise_records(records: Iterable[DeadLetterRecord], examples: int = 3
                      ) -> DeadLetterSummary:
    """Count per reason (most frequent first) with the latest ``examples`` of each."""
    counts: collections.Counter = collections.Counter()
    latest: dict[str, list[DeadLetterRecord]] = collections.defaultdict(list)
    total = unreadable = 0
    for record in records:
        total += 1
        if record.document is None:
            unreadable += 1
            continue
        counts[record.reason] += 1
        latest[record.reason].append(record)
    by_reason = {}
    for reason, count in counts.most_common():
        newest = sorted(latest[reason], key=_created_at, reverse=True)[:examples]
        replayable, advice = REPLAY_RULES.get(reason, (False, "unknown reason"))
        by_reason[reason] = ReasonSummary(reason, count, replayable, advice,
                                          [_example(r.document) for r in newest])
    return DeadLetterSummary(total, unreadable, by_reason)


def _created_at(record: DeadLetterRecord) -> tuple[str, int]:
    return str(record.document.get("created_at", "")), record.timestamp_ms


def _example(document: dict) -> Example:
    return Example(document.get("event_id"), str(document.get("message", "")),
                   dict(document.get("source") or {}), str(document.get("created_at", "")),
                   str(document.get("stage", "")))


def summarise(config: KafkaConfig, dead_letter_topic: str, since: float | None = None,
              examples: int = 3, reasons: Iterable[str] | None = None,
              event_ids: Iterable[str] | None = None) -> DeadLetterSummary:
    """The dead-letter topic (from ``since``, epoch seconds) summarised by reason.

    ``reasons`` and ``event_ids`` narrow it down as they choose what ``replay`` sends.
    """
    records = read_dead_letters(config, dead_letter_topic, since)
    if reasons or event_ids:
        records = [r for r in records if _matches(r, reasons, event_ids)]
    return summarise_records(records, examples)


# -- replay --------------------------------------------------------------------------------

@dataclasses.dataclass
class ReplayDecision:
    """One selected dead letter: replayed as ``new_event_id``, or refused (``refused`` says why)."""
    dead_letter_id: str | None
    original_event_id: str | None
    reason: str | None
    dead_letter_position: dict
    new_event_id: str | None = None
    refused: str | None = None
    event: bytes | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        document.pop("event")
        return document


@dataclasses.dataclass
class ReplayReport:
    selected: int
    replayed: list[ReplayDecision]
    refused: list[ReplayDecision]
    dry_run: bool

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_dict(self) -> dict:
        return {"selected": self.selected, "dry_run": self.dry_run,
                "replayed": [d.to_dict() for d in self.replayed],
                "refused": [d.to_dict() for d in self.refused]}


def select(records: Iterable[DeadLetterRecord], reasons: Iterable[str] | None = None,
           event_ids: Iterable[str] | None = None) -> list[DeadLetterRecord]:
    """Dead letters matching every given filter, one per dead_letter_id (the newest).

    At-least-once delivery can publish the same dead letter twice; it is replayed once.
    """
    chosen: dict[str, DeadLetterRecord] = {}
    for record in records:
        if not _matches(record, reasons, event_ids):
            continue
        identity = record.document.get("dead_letter_id") or str(record.position)
        if identity not in chosen or record.timestamp_ms >= chosen[identity].timestamp_ms:
            chosen[identity] = record
    return list(chosen.values())


def _matches(record: DeadLetterRecord, reasons: Iterable[str] | None,
             event_ids: Iterable[str] | None) -> bool:
    """A readable dead letter with one of ``reasons`` and ``event_ids`` (None: any)."""
    document = record.document
    return (document is not None
            and (not reasons or document.get("reason") in set(reasons))
            and (not event_ids or document.get("event_id") in set(event_ids)))


def decide(record: DeadLetterRecord, now_s: float, already_replayed: dict[str, str],
           max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
           new_event_id: str | None = None) -> ReplayDecision:
    """Whether and how to replay one dead letter: the new event's bytes, or why not."""
    document = record.document
    decision = ReplayDecision(document.get("dead_letter_id"), document.get("event_id"),
                              document.get("reason"), record.position.to_dict())
    try:
        decision.event = _restamped(document, now_s, already_replayed, max_event_bytes,
                                    new_event_id or str(uuid.uuid4()))
        decision.new_event_id = json.loads(decision.event)["event_id"]
    except _Refused as refused:
        decision.refused = str(refused)
    return decision


class _Refused(Exception):
    """Why a dead letter is not replayed."""


def _restamped(document: dict, now_s: float, already_replayed: dict[str, str],
               max_event_bytes: int, new_event_id: str) -> bytes:
    reason = document.get("reason")
    replayable, advice = REPLAY_RULES.get(reason, (False, "unknown reason"))
    if not replayable:
        raise _Refused(f"{reason} is not replayed: {advice}")
    if document.get("dead_letter_id") in already_replayed:
        raise _Refused("already replayed as event "
                       f"{already_replayed[document['dead_letter_id']]}; if that failed "
                       "too, replay its own dead letter")
    original = _original_payload(document.get("payload") or {})
    try:
        event = json.loads(original)
    except (ValueError, RecursionError):
        raise _Refused("the payload is not valid JSON") from None
    if not isinstance(event, dict):
        raise _Refused("the payload is not a JSON object")
    event["event_id"], event["sent_at"] = new_event_id, utc_iso(now_s)
    restamped = json.dumps(event, separators=(",", ":")).encode("utf-8")
    try:
        parse_event(restamped, max_event_bytes)
    except EventRejected as rejected:
        raise _Refused(f"not a valid event even after re-stamping ({rejected.reason.value}: "
                       f"{rejected.message})") from None
    return restamped


def _original_payload(payload: dict) -> bytes:
    """The event bytes a dead letter kept, checked against its size and digest."""
    if payload.get("truncated"):
        raise _Refused(f"the dead letter kept only part of the {payload.get('size_bytes')}-byte "
                       "event (--dead_letter_payload_bytes); ask the sender to resend it")
    try:
        data = (base64.b64decode(payload["data"], validate=True)
                if payload.get("encoding") == "base64" else payload["data"].encode("utf-8"))
    except (KeyError, ValueError, AttributeError):
        raise _Refused("the dead letter's payload cannot be read") from None
    if hashlib.sha256(data).hexdigest() != payload.get("sha256"):
        raise _Refused("the payload does not match its sha256: it is not the event as received")
    return data


def replay_plan(records: list[DeadLetterRecord], *, reasons=None, event_ids=None,
                already_replayed: dict[str, str] | None = None, now_s: float | None = None,
                max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[ReplayDecision]:
    """A decision for every selected dead letter (nothing published)."""
    now_s = time.time() if now_s is None else now_s
    return [decide(record, now_s, already_replayed or {}, max_event_bytes)
            for record in select(records, reasons, event_ids)]


def already_replayed(config: KafkaConfig, events_topic: str, since_ms: int) -> dict[str, str]:
    """dead_letter_id -> new event_id, for replays published to ``events_topic`` since then."""
    found = {}
    for record in read_topic(config, events_topic, since_ms):
        headers = {key: value for key, value in (record.headers or [])}
        dead_letter_id = headers.get(REPLAY_OF_DEAD_LETTER)
        if dead_letter_id:
            try:
                found[dead_letter_id.decode()] = json.loads(record.value)["event_id"]
            except (ValueError, KeyError, TypeError):
                found[dead_letter_id.decode()] = "(unreadable)"
    return found


def replay(config: KafkaConfig, dead_letter_topic: str, events_topic: str, *,
           reasons: Iterable[str] | None = None, event_ids: Iterable[str] | None = None,
           dry_run: bool = False, since: float | None = None,
           max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> ReplayReport:
    """Re-publish the chosen dead letters' events as new events (see the module's rules)."""
    records = read_dead_letters(config, dead_letter_topic, since)
    chosen = select(records, reasons, event_ids)
    earliest = min((r.timestamp_ms for r in chosen), default=None)
    replayed_before = (already_replayed(config, events_topic, earliest)
                       if earliest is not None else {})
    decisions = replay_plan(chosen, already_replayed=replayed_before,
                            max_event_bytes=max_event_bytes)
    go = [d for d in decisions if d.refused is None]
    if go and not dry_run:
        _publish(config, events_topic, go)
    return ReplayReport(selected=len(decisions), replayed=go,
                        refused=[d for d in decisions if d.refused is not None], dry_run=dry_run)


def _publish(config: KafkaConfig, events_topic: str, decisions: list[ReplayDecision]) -> None:
    producer = KafkaProducer(**config.client_kwargs(), acks="all", linger_ms=5)
    try:
        futures = []
        for decision in decisions:
            study = json.loads(decision.event).get("study_instance_uid", "")
            headers = [(REPLAY_OF_DEAD_LETTER, (decision.dead_letter_id or "").encode()),
                       (REPLAY_OF_EVENT, (decision.original_event_id or "").encode())]
            futures.append((decision, producer.send(events_topic, value=decision.event,
                                                    key=study.encode(), headers=headers)))
        producer.flush()
        for decision, future in futures:
            future.get(timeout=30)  # raises if the broker refused it
            LOG.info("replayed a dead letter as a new event", extra={
                "dead_letter_id": decision.dead_letter_id, "reason": decision.reason,
                "original_event_id": decision.original_event_id,
                "new_event_id": decision.new_event_id, "events_topic": events_topic})
    finally:
        producer.close()


# -- for the command line ----------------------------------------------------------------

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now_s: float | None = None) -> float:
    """'30m', '2h', '1d' (an age) or an ISO 8601 time with a zone -> epoch seconds."""
    now_s = time.time() if now_s is None else now_s
    age = _AGE.match(text.strip().lower())
    if age:
        return now_s - float(age.group(1)) * _UNITS[age.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give an age (30m, 2h, 1d) or a time such as "
                         "2026-11-26T08:00:00+00:00") from None
    if moment.tzinfo is None:
        raise ValueError(f"--since {text!r}: add a time zone (Z or +01:00)")
    return moment.timestamp()


def summary_lines(summary: DeadLetterSummary) -> list[str]:
    """The summary as lines for a terminal: one per reason, then its latest examples."""
    lines = [f"{summary.total} dead letters" + (f" ({summary.unreadable} unreadable records)"
                                                 if summary.unreadable else "")]
    for reason in summary.by_reason.values():
        replay = "replayable" if reason.replayable else "not replayable"
        lines.append(f"{reason.reason:<28} {reason.count:>7}  {replay}: {reason.advice}")
        for example in reason.latest:
            source = example.source
            lines.append(f"    {example.created_at}  event {example.event_id or '-'}  at "
                         f"{source.get('topic')}/{source.get('partition')}/"
                         f"{source.get('offset')}: {example.message}")
    return lines


def replay_lines(report: ReplayReport) -> list[str]:
    """What a replay did (or would do, when dry) and what it refused, one line each."""
    verb = "would replay" if report.dry_run else "replayed"
    lines = [f"{report.selected} dead letters selected: {verb} {len(report.replayed)}, "
             f"refused {len(report.refused)}"]
    lines += [f"  {verb} event {d.original_event_id} ({d.reason}) as "
              + ("a new event" if report.dry_run else f"new event {d.new_event_id}")
              for d in report.replayed]
    lines += [f"  refused event {d.original_event_id or '-'} ({d.reason}) at "
              f"{d.dead_letter_position['topic']}/{d.dead_letter_position['partition']}/"
              f"{d.dead_letter_position['offset']}: {d.refused}" for d in report.refused]
    return lines

"""Hostile input: a property-based campaign of bad events against the running job.

Hypothesis generates each class of bad input (``HOSTILE_CLASSES`` in
hostile_inputs.py: broken JSON, schema breaches, URIs out of bounds, files that are
missing, cut, garbled, bombs or not images at all), each with the dead-letter reason
the job must give it, and valid events in unusual but legal forms that must each
get a finding. ``run_hostile_campaign``
publishes them interleaved on the events topic of a running job and checks, from
the findings and dead-letter topics only, that:

- every bad input ends in exactly one dead letter with its class's reason (matched
  by its source position, and its payload's sha256 checked);
- every good event gets exactly one finding;
- every record is valid against its schema, and the job is still running.

Generation is deterministic: a fixed seed, no database, the generate phase only
(shrinking needs re-running a live job, so there is none). Each class is drawn by
its own Hypothesis run of ``count / classes`` examples, so every class is covered
at every size; ``integration_tests/test_hostile_input.py`` runs it small and
``make bench-reliability`` in full.

The job must be started with ``--allowed_roots`` naming the workshop root only
(and the default image limits): the campaign writes its "outside" files next to it and
expects every read there to be refused.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import random
import time
import warnings
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from kafka import KafkaProducer

from scenarios.delivery import JOB_START_S
from scenarios.hostile_inputs import (HOSTILE_CLASSES, HostileClass, Workshop,
                                                        good_event, prepare_workshop)
from streaming.contracts import validation
from streaming.contracts.events import DEFAULT_MAX_EVENT_BYTES
from streaming.imaging.types import ImageLimits
from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.kafka.outcomes import OutcomeLog

__all__ = ["HOSTILE_CLASSES", "HostileReport", "build_campaign", "check_outcomes",
           "publish_campaign", "run_hostile_campaign"]


# -- the campaign ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HostileInput:
    hostile_class: str
    expected_reason: str
    payload: bytes | None
    key: bytes | None


@dataclasses.dataclass(frozen=True)
class GoodEvent:
    event_id: str
    payload: bytes
    key: bytes


@dataclasses.dataclass
class Campaign:
    """What to publish, in order: bad inputs with good events between them."""
    records: list[HostileInput | GoodEvent]
    seed: int

    @property
    def bad(self) -> list[HostileInput]:
        return [r for r in self.records if isinstance(r, HostileInput)]

    @property
    def good(self) -> list[GoodEvent]:
        return [r for r in self.records if isinstance(r, GoodEvent)]


def _hypothesis_settings(examples: int) -> settings:
    return settings(max_examples=examples, phases=[Phase.generate], database=None,
                    deadline=None, suppress_health_check=list(HealthCheck),
                    print_blob=False)


def draw_examples(strategy: st.SearchStrategy, count: int, seed: int,
                  distinct: Callable[[object], object] = lambda x: x,
                  seen: set | None = None) -> list:
    """Up to ``count`` distinct examples of ``strategy``, the same for the same seed.

    ``seen`` (updated) holds identities already taken, e.g. by another class's draws.
    """
    found, seen = [], set() if seen is None else seen

    @hypothesis_seed(seed)
    @_hypothesis_settings(count)
    @given(strategy)
    def collect(example):
        identity = distinct(example)
        assume(identity not in seen)
        seen.add(identity)
        found.append(example)

    with warnings.catch_warnings():
        # Examples of 64 KiB and more are intended here; their repr is never shown.
        warnings.simplefilter("ignore", HypothesisWarning)
        collect()
    return found


def carried_event_id(payload: bytes | None) -> str | None:
    """The event_id a payload names, if it names one.

    Two inputs naming one event_id are one event to a job with Redis (the second gets
    no outcome of its own), so a campaign of distinct inputs never repeats one; hypothesis
    draws the same few UUIDs often.
    """
    try:
        document = json.loads(payload)
    except (TypeError, ValueError, RecursionError):  # not JSON, or nested too deep
        return None
    event_id = document.get("event_id") if isinstance(document, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def draw_hostile(shop: Workshop, hostile_class: HostileClass, count: int,
                 seed: int, seen: set | None = None) -> list[HostileInput]:
    """``count`` distinct bad inputs of one class (fewer if the class caps it)."""
    count = min(count, hostile_class.most or count)
    key = st.binary(min_size=1, max_size=16) if hostile_class.name == "tombstone_record" \
        else st.none()
    pairs = draw_examples(st.tuples(hostile_class.strategy(shop), key), count, seed,
                          distinct=lambda pair: carried_event_id(pair[0]) or pair, seen=seen)
    return [HostileInput(hostile_class.name, hostile_class.reason.value, payload, key)
            for payload, key in pairs]


def build_campaign(shop: Workshop, count: int, seed: int, good: int,
                   classes: tuple[HostileClass, ...] = HOSTILE_CLASSES) -> Campaign:
    """``count`` bad inputs spread over ``classes`` and ``good`` good events between them."""
    bad: list[HostileInput] = []
    taken: set = set()   # event_ids (or whole inputs) already in the campaign
    for index, hostile_class in enumerate(classes):
        share = count // len(classes) + (index < count % len(classes))
        bad.extend(draw_hostile(shop, hostile_class, share, seed + index, taken))
    good_events = [GoodEvent(*example) for example in
                   draw_examples(good_event(shop), good, seed - 1, distinct=lambda e: e[0],
                                 seen=taken)]
    random.Random(seed).shuffle(bad)
    return Campaign(_interleave(bad, good_events), seed)


def _interleave(bad: list, good: list) -> list:
    """Good events spread evenly through the bad ones, the first one leading."""
    if not good:
        return list(bad)
    every = max(1, len(bad) // len(good))
    records, pending = [], list(good)
    for index, item in enumerate(bad):
        if index % every == 0 and pending:
            records.append(pending.pop(0))
        records.append(item)
    return records + pending


# -- publishing and checking ------------------------------------------------------------

def publish_campaign(config: KafkaConfig, topic: str, campaign: Campaign
                     ) -> dict[tuple[int, int], HostileInput | GoodEvent]:
    """Send every record as is (acks=all); (partition, offset) -> what was sent there."""
    producer = KafkaProducer(**config.client_kwargs(), acks="all", linger_ms=5,
                             max_request_size=4 * 1024 * 1024)
    try:
        futures = [(record, producer.send(topic, value=record.payload, key=record.key))
                   for record in campaign.records]
        producer.flush()
        positions = {}
        for record, future in futures:
            metadata = future.get(timeout=60)
            positions[(metadata.partition, metadata.offset)] = record
        return positions
    finally:
        producer.close()


@dataclasses.dataclass
class Mismatch:
    hostile_class: str
    expected: str
    got: str            # a reason, "finding" or "no outcome"
    payload: str        # the first bytes of the payload, for the report


@dataclasses.dataclass
class HostileReport:
    """What the campaign saw, from the topics alone."""
    seed: int
    classes: dict[str, dict]                 # name -> expected reason, what, sent, matched
    mismatches: list[Mismatch]
    good_sent: int
    good_without_finding: list[str]          # event ids
    findings: int
    dead_letters: int
    lost: int                                # records sent that got no outcome at all
    duplicated: int                          # records with more than one outcome
    invalid_records: list[str]               # schema violations of published records
    sha256_mismatches: int                   # dead letters whose payload digest is wrong
    unexpected_outcomes: int                 # outcomes of nothing this campaign sent
    job_running: bool
    build_s: float = 0.0
    settle_s: float = 0.0                    # first publish to last outcome

    @property
    def bad_sent(self) -> int:
        return sum(c["sent"] for c in self.classes.values())

    @property
    def ok(self) -> bool:
        return (not self.mismatches and not self.good_without_finding and not self.duplicated
                and not self.lost and not self.invalid_records and not self.sha256_mismatches
                and not self.unexpected_outcomes and self.job_running)

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        document.update(events_sent=self.bad_sent + self.good_sent,
                        hostile_inputs=self.bad_sent, hostile_classes=len(self.classes),
                        ok=self.ok)
        return document


@dataclasses.dataclass
class _Matched:
    """Outcomes grouped by the position of the record they settle, and what did not fit."""
    by_position: dict[tuple[int, int], list]
    invalid: list[str]
    unexpected: int
    wrong_digest: int


def _match(positions: dict, topic: str, log: OutcomeLog) -> _Matched:
    good_position = {record.event_id: position for position, record in positions.items()
                     if isinstance(record, GoodEvent)}
    matched = _Matched(collections.defaultdict(list), [], 0, 0)
    for outcome in log.outcomes:
        schema = validation.FINDING if outcome.kind == "finding" else validation.DEAD_LETTER
        matched.invalid += [f"{outcome.kind}: {e}"
                            for e in validation.errors(schema, outcome.document, strict=True)]
        position = _source_position(outcome, topic, good_position)
        if position not in positions:
            matched.unexpected += 1
            continue
        matched.by_position[position].append(outcome)
        if outcome.kind == "dead_letter" and outcome.payload_sha256 != _digest(positions[position]):
            matched.wrong_digest += 1
    return matched


def check_outcomes(campaign: Campaign, topic: str,
                   positions: dict[tuple[int, int], HostileInput | GoodEvent],
                   log: OutcomeLog, job_running: bool) -> HostileReport:
    """Match every outcome to what was sent at its source position and judge it."""
    matched = _match(positions, topic, log)
    classes = {c.name: {"expected": c.reason.value, "what": c.description, "sent": 0,
                        "matched": 0}
               for c in HOSTILE_CLASSES if any(b.hostile_class == c.name for b in campaign.bad)}
    mismatches, good_missing = [], []
    for position, record in positions.items():
        outcomes = matched.by_position.get(position, [])
        if isinstance(record, GoodEvent):
            if not any(o.kind == "finding" for o in outcomes):
                good_missing.append(record.event_id)
            continue
        tally, got = classes[record.hostile_class], _got(outcomes)
        tally["sent"] += 1
        if got == record.expected_reason:
            tally["matched"] += 1
        else:
            mismatches.append(Mismatch(record.hostile_class, record.expected_reason, got,
                                       _excerpt(record.payload)))
    kinds = collections.Counter(o.kind for o in log.outcomes)
    return HostileReport(
        seed=campaign.seed, classes=classes, mismatches=mismatches,
        good_sent=len(campaign.good), good_without_finding=good_missing,
        findings=kinds["finding"], dead_letters=kinds["dead_letter"],
        lost=sum(1 for position in positions if not matched.by_position.get(position)),
        duplicated=sum(1 for o in matched.by_position.values() if len(o) > 1),
        invalid_records=matched.invalid[:50], sha256_mismatches=matched.wrong_digest,
        unexpected_outcomes=matched.unexpected, job_running=job_running)


def _source_position(outcome, topic: str, good_position: dict) -> tuple[int, int] | None:
    if outcome.kind == "finding":  # findings name their event, not their position
        return good_position.get(outcome.event_id)
    source = outcome.document.get("source", {})
    if source.get("topic") != topic:
        return None
    return source.get("partition"), source.get("offset")


def _digest(record: HostileInput | GoodEvent) -> str:
    return hashlib.sha256(record.payload or b"").hexdigest()


def _got(outcomes: list) -> str:
    if not outcomes:
        return "no outcome"
    kinds = {o.document.get("reason", "finding") if o.kind == "dead_letter" else "finding"
             for o in outcomes}
    return "+".join(sorted(kinds))


def _excerpt(payload: bytes | None) -> str:
    if payload is None:
        return "(no value)"
    return payload[:160].decode("utf-8", "backslashreplace")


# -- running it --------------------------------------------------------------------------

def run_hostile_campaign(config: KafkaConfig, topics, job, workdir: Path, count: int,
                         seed: int = 20261126, good: int | None = None,
                         timeout_s: float | None = None,
                         limits: ImageLimits = ImageLimits(),
                         max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> HostileReport:
    """Publish ``count`` bad inputs and ``good`` good events to a running job; judge them.

    ``topics`` has ``events``, ``findings`` and ``dead_letters`` (topic names); ``job``
    is the running ``LocalJob``, started with ``--allowed_roots`` naming ``workdir``
    only and the given limits. ``good`` defaults to a quarter of ``count``.
    """
    started = time.monotonic()
    shop = prepare_workshop(workdir, limits, max_event_bytes)
    campaign = build_campaign(shop, count, seed, good if good is not None else count // 4)
    build_s = time.monotonic() - started
    ensure_topics(config, {topics.events: 3, topics.findings: 3, topics.dead_letters: 3})
    expected = len(campaign.records)
    with OutcomeLog(config, topics.findings, topics.dead_letters) as log:
        published = time.monotonic()
        positions = publish_campaign(config, topics.events, campaign)
        deadline = published + (timeout_s or JOB_START_S + 0.5 * expected)
        while len(log.outcomes) < expected and time.monotonic() < deadline and job.running():
            log.poll()
        settle_s = time.monotonic() - published
        log.drain(quiet_s=2.0)
        report = check_outcomes(campaign, topics.events, positions, log, job.running())
    report.build_s, report.settle_s = round(build_s, 2), round(settle_s, 2)
    return report

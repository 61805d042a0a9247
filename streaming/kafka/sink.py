"""Publishing findings and dead letters to Kafka without ever dropping one.

- Every record waits for the broker's acknowledgement from all in-sync replicas
  (acks=all) before its source offset counts as settled in the ledger.
- Retriable failures (broker unreachable, leader moving, timeouts) are retried with
  exponential backoff for as long as it takes: the bundle does not finish, so no
  offset is committed, and a crash meanwhile replays the records. Records are re-sent
  only once a cheap probe says the broker answers again: a produce request left
  waiting on a silent broker makes kafka-python's I/O thread spin.
- A record the broker will never take (over the size limit) is not retried: a
  finding becomes a dead letter with reason ``finding_too_large``; a dead letter is
  re-sent with its payload excerpt cut to nothing.
- With ``--redis_url``, records are claimed before sending and marked done after the
  acknowledgement (streaming/delivery/dedup.py): claims are renewed while the sink
  retries through an outage, re-checked before a re-send, and left to be re-examined
  (not skipped) when the bundle fails; each process settles what dead predecessors left
  pending, once, at set-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time

import apache_beam as beam
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from streaming.runtime import metrics
from streaming.contracts.events import event_fingerprint
from streaming.delivery.dedup import (Claim, DedupStore, DedupUnavailable, RedisSettings,
                                      conflict_identity, identity, settle_pending, store_for)
from streaming.contracts.dead_letters import Rejection, Stage, dead_letter_record
from streaming.kafka.config import KafkaConfig
from streaming.kafka.ledger import ledger_for
from streaming.kafka.outcomes import outcome_identities
from streaming.contracts.reasons import Reason
from streaming.contracts.records import OutboundRecord

LOG = logging.getLogger(__name__)

_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
_MAX_BACKOFF_S = 5.0  # short enough to notice a recovered broker quickly


@dataclasses.dataclass(frozen=True)
class WriterSettings:
    config: KafkaConfig
    group_id: str            # whose ledger the published records settle
    findings_topic: str
    dead_letter_topic: str
    dead_letter_payload_bytes: int = 16 * 1024
    max_request_bytes: int = 1024 * 1024
    dedup: RedisSettings | None = None  # None: at-least-once, no duplicate suppression


_PRODUCERS: dict[tuple, KafkaProducer] = {}
_PRODUCERS_LOCK = threading.Lock()


def shared_producer(config: KafkaConfig, max_request_bytes: int) -> KafkaProducer:
    """One producer per process and cluster: it is thread-safe and batches across sinks."""
    key = (config, max_request_bytes)
    with _PRODUCERS_LOCK:
        if key not in _PRODUCERS:
            _PRODUCERS[key] = KafkaProducer(
                **config.client_kwargs(),
                acks="all",
                # The sink retries records itself, after reading back what reached the
                # topic (see PublishToKafka._unpublished). kafka-python's idempotent
                # producer never recovers once a batch has expired against a silent
                # broker, so it is off, and so are its own retries.
                enable_idempotence=False,
                retries=0,
                linger_ms=5,
                max_request_size=max_request_bytes,
                max_block_ms=10_000,       # a dead broker surfaces as a retriable timeout
                # Short: while a produce request waits on a broker that does not answer,
                # kafka-python's I/O thread busy-loops; we fail fast and wait in
                # _wait_for_broker instead, which costs no CPU.
                request_timeout_ms=3_000,
                delivery_timeout_ms=5_000,
                reconnect_backoff_max_ms=5_000,
            )
        return _PRODUCERS[key]


class BrokerProbe:
    """Asks the broker a cheap question (a partition's end offset) to see if it answers.

    Connected while the broker is up (at setup): kafka-python's bootstrap can hang on
    a broker that accepts connections but does not answer.
    """

    def __init__(self, config: KafkaConfig):
        self._config = config
        self._consumer = None
        self._lock = threading.Lock()   # one probe serves every sink thread of a process
        self._connect()

    def _connect(self) -> None:
        try:
            self._consumer = KafkaConsumer(**self._config.client_kwargs(),
                                           request_timeout_ms=3_000, bootstrap_timeout_ms=5_000,
                                           reconnect_backoff_max_ms=5_000)
        except KafkaError:
            self._consumer = None

    def answers(self, topic: str) -> bool:
        with self._lock:
            if self._consumer is None:
                self._connect()
                if self._consumer is None:
                    return False
            try:
                self._consumer.end_offsets([TopicPartition(topic, 0)])
            except KafkaError:
                metrics.gauge("broker_reachable", 0)
                return False
            metrics.gauge("broker_reachable", 1)
            return True


_PROBES: dict[KafkaConfig, BrokerProbe] = {}


def shared_probe(config: KafkaConfig) -> BrokerProbe:
    """One probe (one consumer connection) per process and cluster, for all the sinks."""
    with _PRODUCERS_LOCK:
        if config not in _PROBES:
            _PROBES[config] = BrokerProbe(config)
        return _PROBES[config]


class PublishToKafka(beam.DoFn):
    """OutboundRecord -> the findings or dead-letter topic, acknowledged, then settled."""

    def __init__(self, settings: WriterSettings):
        self._settings = settings

    def setup(self):
        self._producer = shared_producer(self._settings.config, self._settings.max_request_bytes)
        self._ledger = ledger_for(self._settings.group_id)
        self._claims = (Claims(self._settings.dedup, self._ledger, self._published_since,
                               self._settings.dead_letter_payload_bytes)
                        if self._settings.dedup else None)
        self._probe = shared_probe(self._settings.config)
        if self._claims is not None:
            settle_once(self._settings, self._published_since)

    def _published_since(self, since_s: float) -> set[str]:
        """Identities of every outcome published since ``since_s`` (the read-back)."""
        return outcome_identities(self._settings.config, self._settings.findings_topic,
                                  self._settings.dead_letter_topic, since_s)

    def start_bundle(self):
        self._records: list[OutboundRecord] = []

    def process(self, record: OutboundRecord):
        self._records.append(record)

    def finish_bundle(self):
        records, self._records = self._records, []
        if self._claims is None:
            self._publish(records)
            return
        claimed = self._claims.claim(records)
        try:
            acknowledged = self._publish(claimed)
        except BaseException:
            # The runner may retry this bundle in this process: its claims must then be
            # re-examined against the topics, never taken for done.
            self._claims.abandon(claimed)
            raise
        self._claims.done(acknowledged)

    def _publish(self, records: list[OutboundRecord]) -> list[OutboundRecord]:
        """Send, retry until every record is acknowledged, settle; returns what was sent."""
        first_sent = time.time()
        pending = [(record, self._send(record)) for record in records]
        acknowledged, attempt = [], 0
        while pending:
            self._producer.flush()
            retry, replaced = [], []
            for record, outcome in pending:
                error = self._error(outcome)
                if error is None:
                    self._settle(record)
                    acknowledged.append(record)
                elif isinstance(error, _TOO_LARGE):
                    replaced.append(self._too_large(record))
                else:
                    retry.append((record, error))
            if acknowledged:
                metrics.gauge("broker_reachable", 1)
            if retry:
                metrics.gauge("broker_reachable", 0)
                attempt += 1
                self._wait_before_retry(attempt, retry)
                self._wait_for_broker(self._topic(retry[0][0]), retry)
                retry = self._unpublished(retry, first_sent, acknowledged)
                retry = self._still_ours(retry)
            pending = [(record, self._send(record))
                       for record in replaced + [record for record, _ in retry]]
        return acknowledged

    def _still_ours(self, failures: list) -> list:
        """Before a re-send: renew our claims, and drop what another worker took over."""
        if self._claims is None:
            return failures
        self._claims.renew([record for record, _ in failures])
        kept = {id(record) for record in self._claims.drop_taken([r for r, _ in failures])}
        return [(record, error) for record, error in failures if id(record) in kept]

    # -- helpers -------------------------------------------------------------------

    def _topic(self, record: OutboundRecord) -> str:
        return (self._settings.findings_topic if record.kind == OutboundRecord.FINDING
                else self._settings.dead_letter_topic)

    def _send(self, record: OutboundRecord):
        """A future, or the exception send() raised at once (size checks, no metadata)."""
        try:
            return self._producer.send(self._topic(record), value=record.value, key=record.key)
        except KafkaError as error:
            return error

    @staticmethod
    def _error(outcome) -> Exception | None:
        if isinstance(outcome, Exception):
            return outcome
        if outcome.failed():
            return outcome.exception
        return None if outcome.succeeded() else TimeoutError("not acknowledged after flush")

    def _settle(self, record: OutboundRecord) -> None:
        metrics.count("published", record.kind)
        if record.sent_at_epoch is not None:
            # Clocks of sender and job differ: a negative span says so and counts as 0.
            metrics.observe("end_to_end_latency_seconds",
                            max(time.time() - record.sent_at_epoch, 0.0), record.kind)
        self._ledger.settle(record.source)

    def _too_large(self, record: OutboundRecord) -> OutboundRecord:
        if record.kind == OutboundRecord.FINDING:
            LOG.warning("finding over the broker's size limit; dead-lettering its event",
                        extra={"event_id": record.event_id, "bytes": len(record.value)})
            return dead_letter_record(
                Rejection(Reason.FINDING_TOO_LARGE,
                          f"the finding is {len(record.value)} bytes, over the broker's limit; "
                          "raise the findings topic's max.message.bytes", Stage.PUBLISH),
                record.source, record.source_payload, event_id=record.event_id,
                payload_limit=self._settings.dead_letter_payload_bytes,
                sent_at_epoch=record.sent_at_epoch)
        document = json.loads(record.value)
        if not document["payload"]["data"]:
            raise RuntimeError("a dead letter without payload exceeds the broker's size limit; "
                               "the dead-letter topic's max.message.bytes is misconfigured")
        document["payload"]["data"] = ""
        document["payload"]["truncated"] = True
        return dataclasses.replace(record, value=json.dumps(document).encode("utf-8"))

    def _unpublished(self, failures: list, since: float, acknowledged: list) -> list:
        """The failed records whose outcome did not reach the topic after all.

        A timeout is ambiguous: the broker may have written the record and lost the
        answer. Reading back the topics' tail tells; what is there is settled, not re-sent.
        """
        try:
            published = outcome_identities(self._settings.config, self._settings.findings_topic,
                                           self._settings.dead_letter_topic, since - 60.0)
        except (KafkaError, TimeoutError) as error:
            LOG.warning("cannot read back published outcomes; re-sending all", extra={
                "error": type(error).__name__})
            return failures
        remaining = []
        for record, error in failures:
            if _identity(record) in published:
                self._settle(record)
                acknowledged.append(record)
            else:
                remaining.append((record, error))
        return remaining

    def _wait_for_broker(self, topic: str, failures: list) -> None:
        """Re-send only once the broker answers again (see request_timeout_ms above)."""
        waited, delay = 0.0, 0.5
        while not self._probe.answers(topic):
            if waited == 0.0:
                LOG.warning("broker not answering; waiting before publishing again",
                            extra={"topic": topic})
            if self._claims is not None:
                # Alive and retrying: keep our claims fresh so no one takes them over.
                self._claims.renew([record for record, _ in failures])
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, _MAX_BACKOFF_S)
        if waited:
            LOG.info("broker answering again", extra={"topic": topic, "waited_s": round(waited, 1)})

    def _wait_before_retry(self, attempt: int, failures: list) -> None:
        # Never give up: a record not acknowledged is a record not committed.
        delay = min(0.5 * 2 ** (attempt - 1), _MAX_BACKOFF_S)
        metrics.count("publish_retries", amount=len(failures))
        errors = sorted({type(error).__name__ for _, error in failures})
        LOG.warning("publishing failed; retrying", extra={
            "records": len(failures), "attempt": attempt, "backoff_s": delay, "errors": errors})
        time.sleep(delay)


_SETTLED: set[RedisSettings] = set()
_SETTLED_LOCK = threading.Lock()


def settle_once(settings: WriterSettings, read_back) -> None:
    """Settle, once per process, the claims dead predecessors left pending (dedup.py).

    In the worker, not the launcher: on Dataflow the launcher never publishes. A read-back
    that fails is a warning and a metric; the job starts anyway (a replayed event whose
    claim is still pending is read back again when it is taken over).
    """
    with _SETTLED_LOCK:
        if settings.dedup in _SETTLED:
            return
        _SETTLED.add(settings.dedup)
    try:
        done, released = settle_pending(store_for(settings.dedup), read_back)
    except DedupUnavailable as error:
        metrics.gauge("dedup_store_reachable", 0)
        metrics.count("dedup", "settle_failed")
        LOG.warning("dedup store unavailable at start; pending claims settle when their "
                    "events come again", extra={"error": str(error)})
        return
    except Exception as error:  # noqa: BLE001 - Kafka, timeouts: never a failed start
        metrics.count("dedup", "settle_failed")
        LOG.warning("could not settle pending claims at start; they are read back when "
                    "their events come again", extra={"error": type(error).__name__})
        return
    metrics.count("dedup", "settled", done)
    metrics.count("dedup", "released", released)


class Claims:
    """The sink's side of streaming/delivery/dedup.py: claim before publishing, mark done
    after, renew while retrying, re-examine by reading back before a takeover."""

    def __init__(self, settings: RedisSettings, ledger, read_back, payload_limit: int):
        self._settings = settings
        self._ledger = ledger
        self._read_back = read_back
        self._payload_limit = payload_limit
        self._mine: set[str] = set()
        self._taken: set[str] = set()   # ours once, taken over while we retried
        self._fingerprints: dict[str, str | None] = {}

    def claim(self, records: list[OutboundRecord]) -> list[OutboundRecord]:
        """The records to publish; duplicates are settled here without publishing."""
        try:
            store = store_for(self._settings)
            fingerprints: dict[str, str | None] = {}
            for record in records:  # an identity is claimed for its first content
                fingerprints.setdefault(_identity(record), _fingerprint(record))
            claims = store.claim_many(fingerprints, fingerprints)
            self._fingerprints.update(fingerprints)
            metrics.gauge("dedup_store_reachable", 1)
            return self._resolve(store, records, claims)
        except DedupUnavailable as error:
            metrics.gauge("dedup_store_reachable", 0)
            metrics.count("dedup", "unavailable", len(records))
            LOG.warning("dedup store unavailable; publishing without duplicate suppression",
                        extra={"records": len(records), "error": str(error)})
            return [_marked_unavailable(record) for record in records]

    def _resolve(self, store: DedupStore, records, claims) -> list[OutboundRecord]:
        publish, seen, waiting, conflicts = [], set(), [], []
        for record in records:
            name = _identity(record)
            claim = claims[name]
            if claim.conflicts_with(_fingerprint(record)):
                conflicts.append(self._conflict(record))
            elif claim.mine and name not in seen:
                seen.add(name)
                self._mine.add(name)
                publish.append(record)
            elif claim.mine or claim.done:
                self._skip(record)  # its outcome exists (or is being published right here)
            else:
                waiting.append(record)
        if conflicts:
            publish += self.claim(conflicts)  # claimed too: a replay repeats no conflict
        return publish + self._wait_for_holders(store, waiting, seen)

    def _conflict(self, record: OutboundRecord) -> OutboundRecord:
        """The event reuses an event_id already claimed for other content: dead-letter it."""
        metrics.count("dedup", "conflict")
        digest = hashlib.sha256(record.source_payload or b"").hexdigest()
        document = json.loads(record.value)
        LOG.warning("event_id reused for a different image; dead-lettering the newcomer",
                    extra={"event_id": record.event_id})
        return dead_letter_record(
            Rejection(Reason.EVENT_ID_CONFLICT,
                      "this event_id was already used for an event naming another image "
                      "(UIDs, URI or sha256 differ); the sender must give each event its "
                      "own event_id and send this one again with a new one", Stage.PUBLISH),
            record.source, record.source_payload, event_id=record.event_id,
            study_instance_uid=document.get("study_instance_uid"),
            payload_limit=self._payload_limit,
            id_from=conflict_identity(record.event_id, digest))

    def _wait_for_holders(self, store: DedupStore, waiting, seen) -> list[OutboundRecord]:
        """Records claimed pending elsewhere: wait; take over (after reading back) a claim
        whose owner died, that a failed bundle of ours left, or that went quiet too long."""
        publish = []
        while waiting:
            names = {_identity(r): self._fingerprints.get(_identity(r)) for r in waiting}
            claims = store.claim_many(names, names)
            still, due = [], []
            for record in waiting:
                name, claim = _identity(record), claims[_identity(record)]
                if claim.conflicts_with(_fingerprint(record)):
                    publish += self.claim([self._conflict(record)])
                elif name in seen or claim.done:
                    self._skip(record)
                elif claim.mine:
                    seen.add(name)
                    self._mine.add(name)
                    publish.append(record)
                elif claim.stale or (time.time() - (claim.since or 0)
                                     >= self._settings.takeover_after_s):
                    due.append((record, claim))
                else:
                    still.append(record)
            still += self._take_over(store, due, seen, publish)
            waiting = still
            if waiting:
                time.sleep(1.0)
        return publish

    def _take_over(self, store: DedupStore, due: list[tuple[OutboundRecord, Claim]], seen,
                   publish: list) -> list[OutboundRecord]:
        """Read back first: a holder that died after the broker's ack left its outcome."""
        if not due:
            return []
        try:
            published = self._read_back(min(claim.since or 0 for _, claim in due) - 60.0)
        except (KafkaError, TimeoutError) as error:
            LOG.warning("cannot read back published outcomes; not taking over yet",
                        extra={"error": type(error).__name__})
            return [record for record, _ in due]
        still = []
        for record, claim in due:
            name = _identity(record)
            if name in published:
                store.mark_done([name], {name: self._fingerprints.get(name)})
                self._skip(record)
            elif store.take_over(claim, self._fingerprints.get(name)):
                metrics.count("dedup", "taken_over")
                seen.add(name)
                self._mine.add(name)
                publish.append(record)
            else:
                still.append(record)  # someone else moved first: look again
        return still

    def renew(self, records: list[OutboundRecord]) -> None:
        """Keep our claims fresh while retrying; note those another worker took over."""
        names = [_identity(r) for r in records if _identity(r) in self._mine]
        try:
            ours = store_for(self._settings).renew(
                names, {name: self._fingerprints.get(name) for name in names})
        except DedupUnavailable:
            return  # cannot tell: keep sending (a duplicate, never a loss)
        for name in set(names) - ours:
            self._mine.discard(name)
            self._taken.add(name)

    def drop_taken(self, records: list[OutboundRecord]) -> list[OutboundRecord]:
        """The records still ours to re-send; those taken over are settled, not re-sent
        (their new holder read back the topics before publishing)."""
        kept = []
        for record in records:
            name = _identity(record)
            if name in self._taken:
                self._taken.discard(name)
                LOG.warning("claim taken over by another worker; not re-sending",
                            extra={"event_id": record.event_id})
                self._skip(record)
            else:
                kept.append(record)
        return kept

    def _skip(self, record: OutboundRecord) -> None:
        metrics.count("dedup", "skipped")
        self._ledger.settle(record.source)

    def abandon(self, records: list[OutboundRecord]) -> None:
        names = [_identity(r) for r in records]
        with contextlib.suppress(DedupUnavailable):
            store_for(self._settings).abandon(names)
        self._mine.difference_update(names)

    def done(self, acknowledged: list[OutboundRecord]) -> None:
        names = [name for name in map(_identity, acknowledged) if name in self._mine]
        try:
            store_for(self._settings).mark_done(
                names, {name: self._fingerprints.get(name) for name in names})
        except DedupUnavailable as error:
            metrics.gauge("dedup_store_reachable", 0)
            # The claims stay pending; the next start settles them from the topics.
            metrics.count("dedup", "unavailable", len(names))
            LOG.warning("could not mark outcomes done", extra={"records": len(names),
                                                               "error": str(error)})
        self._mine.difference_update(names)
        for name in names:
            self._fingerprints.pop(name, None)


def _fingerprint(record: OutboundRecord) -> str | None:
    """Only events named by an event_id carry one: a position identity cannot be reused."""
    return event_fingerprint(record.source_payload) if record.event_id else None


def _identity(record: OutboundRecord) -> str:
    return record.dedup_identity or identity(record.event_id, record.source)


def _marked_unavailable(record: OutboundRecord) -> OutboundRecord:
    document = json.loads(record.value)
    document["dedup"] = "unavailable"
    return dataclasses.replace(record, value=json.dumps(document, separators=(",", ":")).encode())


class WriteToKafka(beam.PTransform):
    def __init__(self, settings: WriterSettings):
        super().__init__()
        self._settings = settings

    def expand(self, records):
        return records | beam.ParDo(PublishToKafka(self._settings))

"""One running job per consumer group: a lease kept in Kafka itself (no Redis needed).

Two jobs on one group each read every partition from the group's offset, so every
event got two outcomes. A job therefore takes the group's lease before it reads:

- The lease topic (one partition) is a log of ``claim``, ``beat`` and ``release``
  records keyed by consumer group. Every reader of the log replays it the same way, so
  all agree who holds a group: a claim wins only if the group has no holder, or the
  holder's last beat is older than its ``ttl_s`` at the claim's timestamp.
- The winning claim's offset is the lease's token: it only grows, so it fences. Readers
  write it into each offset commit's metadata and refuse to commit over a newer one
  (streaming/kafka/source.py), and a job whose own beats are older than ``ttl_s`` (it
  was paused) commits nothing until a beat confirms it still holds the lease.
- The holder beats every ``ttl_s / 5``. A job that stops cleanly releases the lease; a
  killed one loses it ``ttl_s`` after its last beat, so a restart waits at most that long.

Timestamps are the writers' clocks: keep the hosts' clocks synchronised (NTP) to well
within ``ttl_s``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.runtime import lifecycle

LOG = logging.getLogger(__name__)

DEFAULT_TOPIC = "medimg-leases"
DEFAULT_TTL_S = 10.0


class GroupLeaseHeld(RuntimeError):
    """Another live job holds the consumer group; the message says what to do."""


@dataclasses.dataclass
class Holder:
    job: str
    token: int
    ttl_ms: int
    last_beat_ms: int


def replay(state: dict[str, Holder], group: str, record_value: dict, offset: int,
           timestamp_ms: int) -> None:
    """Apply one lease record to ``state`` (group -> holder): the rule every job shares."""
    kind, job = record_value.get("kind"), record_value.get("job")
    holder = state.get(group)
    if kind == "claim":
        if holder is None or timestamp_ms - holder.last_beat_ms > holder.ttl_ms:
            state[group] = Holder(job, offset, int(record_value["ttl_ms"]), timestamp_ms)
    elif kind == "beat":
        if holder is None:
            # The claim itself is past the topic's retention: the beat says who holds it.
            state[group] = Holder(job, int(record_value["token"]),
                                  int(record_value["ttl_ms"]), timestamp_ms)
        elif holder.job == job and holder.token == record_value.get("token"):
            holder.last_beat_ms = timestamp_ms
    elif kind == "release" and holder is not None and holder.job == job:
        del state[group]


class GroupLease:
    """acquire() before reading; the lease beats in a thread until release()."""

    def __init__(self, config: KafkaConfig, group: str, topic: str = DEFAULT_TOPIC,
                 ttl_s: float = DEFAULT_TTL_S, startup_timeout_s: float = 60.0):
        self._config, self._group, self._topic = config, group, topic
        self._ttl_ms = int(ttl_s * 1000)
        self.job = uuid.uuid4().hex
        self.token: int | None = None
        self._state: dict[str, Holder] = {}
        self._partition = TopicPartition(topic, 0)
        self._lock = threading.Lock()
        self._confirmed_at: float | None = None  # monotonic time of the last confirmed beat
        self._fenced = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ensure_topics(config, {topic: 1}, timeout_s=startup_timeout_s)
        self._producer = KafkaProducer(**config.client_kwargs(), acks="all", linger_ms=0)
        self._consumer = KafkaConsumer(**config.client_kwargs(), enable_auto_commit=False)
        self._consumer.assign([self._partition])
        self._consumer.seek_to_beginning(self._partition)

    # -- the log ---------------------------------------------------------------------

    def _write(self, kind: str) -> None:
        value = {"kind": kind, "job": self.job, "token": self.token, "ttl_ms": self._ttl_ms}
        self._producer.send(self._topic, key=self._group.encode(),
                            value=json.dumps(value).encode(), partition=0,
                            timestamp_ms=int(time.time() * 1000)).get(timeout=10)

    def _catch_up(self) -> Holder | None:
        """Replay the log to its end; the group's holder now (maybe expired)."""
        end = self._consumer.end_offsets([self._partition])[self._partition]
        while self._consumer.position(self._partition) < end:
            for record in self._consumer.poll(timeout_ms=500).get(self._partition, []):
                if record.key is None:
                    continue
                try:
                    value = json.loads(record.value)
                except ValueError:
                    continue  # not ours: nothing else should write here, but never stop on it
                replay(self._state, record.key.decode(), value, record.offset, record.timestamp)
        return self._state.get(self._group)

    def _expired(self, holder: Holder) -> bool:
        return time.time() * 1000 - holder.last_beat_ms > holder.ttl_ms

    # -- the job's side --------------------------------------------------------------

    def acquire(self, wait_s: float | None = None) -> int:
        """Take the lease, waiting up to ``wait_s`` (default: ttl plus a beat) for a
        holder that stopped beating to expire. Raises GroupLeaseHeld if it keeps beating."""
        wait_s = self._ttl_ms / 1000 * 1.3 if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while True:
            holder = self._catch_up()
            if holder is None or self._expired(holder):
                self._write("claim")
                holder = self._catch_up()
                if holder is not None and holder.job == self.job:
                    self.token = holder.token
                    self._confirmed_at = time.monotonic()
                    break
            if time.monotonic() >= deadline:
                age_s = (time.time() * 1000 - holder.last_beat_ms) / 1000
                raise GroupLeaseHeld(
                    f"another job is running on consumer group {self._group!r} (its last "
                    f"heartbeat was {age_s:.1f} s ago): two jobs on one group would both "
                    "publish an outcome for every event. Stop that job first (a rolling "
                    "update must stop the old job before starting the new one), or pass "
                    "another --consumer_group. A job that was killed gives the group up "
                    f"{self._ttl_ms / 1000:.0f} s after its last heartbeat (--lease_ttl_s).")
            time.sleep(min(self._ttl_ms / 5000, max(deadline - time.monotonic(), 0.05)))
        LOG.info("consumer group lease taken", extra={"consumer_group": self._group,
                                                      "lease_token": self.token})
        register(self)
        self._thread = threading.Thread(target=self._beat, name="group-lease", daemon=True)
        self._thread.start()
        return self.token

    def held(self) -> bool:
        """Whether this job may commit now: not superseded, and confirmed within ttl_s."""
        with self._lock:
            return (not self._fenced and self._confirmed_at is not None
                    and time.monotonic() - self._confirmed_at < self._ttl_ms / 1000)

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl_ms / 5000):
            if not self._beat_once():
                return

    def _beat_once(self) -> bool:
        """Beat and read back who holds the group; False once another job does."""
        started = time.monotonic()
        try:
            self._write("beat")
            holder = self._catch_up()
        except KafkaError as error:
            LOG.warning("lease heartbeat failed; will retry",
                        extra={"consumer_group": self._group, "error": type(error).__name__})
            return True
        if holder is None or holder.job != self.job:
            with self._lock:
                self._fenced = True
            LOG.error("consumer group lease lost to another job: this job stops committing "
                      "and drains", extra={"consumer_group": self._group,
                                           "lease_token": self.token})
            lifecycle.request_drain()
            return False
        with self._lock:
            self._confirmed_at = started
        return True

    def release(self) -> None:
        """Stop beating and give the group up at once (a clean stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self.token is not None and not self._fenced:
                self._write("release")
                LOG.info("consumer group lease released", extra={"consumer_group": self._group})
        except KafkaError as error:
            LOG.warning("lease release failed; it expires by itself",
                        extra={"consumer_group": self._group, "error": type(error).__name__})
        finally:
            self._producer.close(timeout=5)
            self._consumer.close()
            _forget(self)


_LEASES: dict[int, GroupLease] = {}
_LEASES_LOCK = threading.Lock()


def register(lease: GroupLease) -> None:
    """Make the lease visible to the readers of this process (see lease_allows_commit)."""
    with _LEASES_LOCK:
        _LEASES[lease.token] = lease


def _forget(lease: GroupLease) -> None:
    with _LEASES_LOCK:
        if _LEASES.get(lease.token) is lease:
            del _LEASES[lease.token]


def lease_allows_commit(token: int | None) -> bool:
    """False where this process holds the lease ``token`` and cannot vouch for it now.

    Workers of a distributed runner hold no lease themselves (the launcher does): there
    the token in the commit metadata is the guard (source.commit_verdict).
    """
    with _LEASES_LOCK:
        lease = _LEASES.get(token)
    return lease is None or lease.held()

"""Effectively-once outcomes: at most one finding or dead letter per event, even across crashes.

Kafka delivers at least once, so a restarted job sees uncommitted events again. A
two-phase claim in Redis, keyed by the event's identity (its ``event_id``, or its
source position when it had none), makes the second sighting a no-op:

1. **claim**: set the key to ``pending|<owner>|<time>|<fingerprint>`` if it is free (and
   note it in a sorted set of pending claims, scored by claim time) before publishing;
   only the claimer publishes;
2. **done**: after the broker acknowledged the outcome, the key becomes ``done|...``; a
   later sighting of a ``done`` key publishes nothing and just settles its offset.

An event is settled only once its outcome is acknowledged by the broker, or once a
read-back of the findings and dead-letter topics shows the outcome is there:

- a claim of this very process that is no longer in flight (its bundle failed, and the
  runner retries it here) is re-examined by that read-back, never taken for done;
- a claim of another process is taken over when its owner's heartbeat key expired (the
  process died) or after ``takeover_after_s``, and only after the read-back: an owner
  that died between the broker's ack and ``done`` left its outcome in the topic;
- a live owner stuck retrying (a broker outage) renews its claims, and re-checks that
  they are still its own before re-sending;
- every process settles, once at set-up, the pending claims of owners whose heartbeat
  expired (a killed predecessor): done if the outcome is in the topics, else released so
  the replay publishes. A read-back that cannot finish is a warning and a metric, never
  a failed start. Pending entries older than the key TTL are trimmed.

The fingerprint is a digest of the event's identifying fields (UIDs, URI, sha256; not
``sent_at``, so an honest re-send is still the same event). An ``event_id`` reused with
a different fingerprint is a conflict: the sink dead-letters it (``event_id_conflict``).

Keys live ``ttl_s`` (default 8 days): keep it longer than the events topic's retention,
the longest window in which an event can be replayed.

When Redis cannot be reached the job does not stop and does not drop: it publishes
the outcome with ``"dedup": "unavailable"`` and counts it (``medimg_dedup_total
{result="unavailable"}``): a possible duplicate alert is better than a missed one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from typing import Iterable

import redis

from streaming.contracts.reasons import Reason
from streaming.contracts.records import SourcePosition
from streaming.runtime.secrets import read_secret

LOG = logging.getLogger(__name__)

# Longer than Kafka's default 7-day retention: an event still in the topic (and so still
# replayable) is always still remembered.
DEFAULT_TTL_S = 8 * 24 * 3600
DEFAULT_TAKEOVER_S = 60.0
PENDING, DONE = "pending", "done"

# One owner id per process: claims of this process are recognised as its own.
OWNER = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
# A live process refreshes its heartbeat key every HEARTBEAT_S; it expires after
# HEARTBEAT_TTL_S without a refresh: then its pending claims are a dead owner's.
HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15

# KEYS: claim key, pending set. ARGV: value, ttl, identity, claimed at.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return {1, ARGV[1]}
"""

# KEYS: claim key, pending set. ARGV: expected value, new value, ttl, identity, claimed at.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  return 1
end
return 0
"""

# KEYS: claim key, pending set. ARGV: our prefix "pending|<owner>|", new value, ttl,
# identity, claimed at. Renews a claim only while it is still ours.
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  return 1
end
return 0
"""


def identity(event_id: str | None, source: SourcePosition) -> str:
    """What makes two records the same event: its event_id, else where it was read."""
    return event_id or f"pos:{source.topic}/{source.partition}/{source.offset}"


def conflict_identity(event_id: str, payload_sha256: str) -> str:
    """What a conflict dead letter is claimed by: one per record reusing ``event_id``."""
    return f"conflict:{event_id}:{payload_sha256}"


def outcome_identity(kind: str, document: dict) -> str:
    """The dedup identity an outcome settles (see ``identity``)."""
    if kind == "finding":
        return document["event_id"]
    if document.get("reason") == Reason.EVENT_ID_CONFLICT and document.get("event_id"):
        return conflict_identity(document["event_id"], document["payload"]["sha256"])
    return identity(document.get("event_id"), SourcePosition(**document["source"]))


class DedupUnavailable(RuntimeError):
    """Redis could not be reached or answered with an error."""


@contextlib.contextmanager
def _redis_errors():
    try:
        yield
    except redis.RedisError as error:
        raise DedupUnavailable(type(error).__name__) from error


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    """Where the claims live. Credentials are read from the environment on the worker:
    MEDIMG_REDIS_USERNAME / MEDIMG_REDIS_PASSWORD, or their _FILE variants, or the Secret
    Manager versions ``secret_manager`` names for them (names, never values)."""
    url: str
    namespace: str
    ttl_s: int = DEFAULT_TTL_S
    takeover_after_s: float = DEFAULT_TAKEOVER_S
    ssl_cafile: str | None = None
    secret_manager: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis_url must start with redis://, rediss:// or unix://, "
                             f"got {self.url.split('://')[0]}://...")
        if "@" in self.url.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("--redis_url must not carry credentials (they would show in "
                             "process lists); set MEDIMG_REDIS_USERNAME / MEDIMG_REDIS_PASSWORD")

    def client(self, environ=None) -> redis.Redis:
        options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0,
                   "health_check_interval": 30, "decode_responses": True}
        for option, variable in (("username", "MEDIMG_REDIS_USERNAME"),
                                 ("password", "MEDIMG_REDIS_PASSWORD")):
            value = read_secret(variable, environ, dict(self.secret_manager))
            if value:
                options[option] = value
        if self.ssl_cafile:
            options["ssl_ca_certs"] = self.ssl_cafile
        return redis.Redis.from_url(self.url, **options)


@dataclasses.dataclass(frozen=True)
class Claim:
    """The state of one identity after ``claim_many``."""
    identity: str
    mine: bool              # this process may publish
    done: bool = False      # an outcome was already published (or is in flight here)
    holder: str | None = None  # the owner of a pending claim that is not ours to publish
    since: float | None = None
    value: str | None = None   # the claim as stored (for compare-and-set)
    stale: bool = False     # ours but no longer in flight, or its owner is dead: read back
    fingerprint: str | None = None  # of the content the identity was claimed for

    def conflicts_with(self, fingerprint: str | None) -> bool:
        """Whether content with ``fingerprint`` reuses this identity for something else."""
        return bool(fingerprint and self.fingerprint and fingerprint != self.fingerprint)


def _parse(value: str) -> tuple[str, str, float, str]:
    """(state, owner, since, fingerprint) of a stored claim."""
    state, owner, since, fingerprint = (value.split("|") + ["", "", ""])[:4]
    try:
        return state, owner, float(since or 0), fingerprint
    except ValueError:
        return state, owner, 0.0, fingerprint


class DedupStore:
    def __init__(self, client: redis.Redis, settings: RedisSettings, owner: str = OWNER):
        self._client = client
        self._settings = settings
        self._owner = owner
        self._claim = client.register_script(_CLAIM)
        self._take_over = client.register_script(_TAKE_OVER)
        self._renew = client.register_script(_RENEW)
        # A sorted set (claim time), so old entries are cheap to find and trim; per-field
        # expiry in a hash needs Redis 7.4.
        self._pending_key = f"medimg:pending-claims:{settings.namespace}"
        self._in_flight: set[str] = set()  # claims this process is publishing right now
        self._lock = threading.Lock()

    @property
    def owner(self) -> str:
        return self._owner

    def _key(self, identity_: str) -> str:
        return f"medimg:dedup:{self._settings.namespace}:{identity_}"

    def _heartbeat_key(self, owner: str) -> str:
        return f"medimg:owner:{self._settings.namespace}:{owner}"

    def _pending_value(self, fingerprint: str | None = None, at: float | None = None) -> str:
        return f"{PENDING}|{self._owner}|{(at or time.time()):.3f}|{fingerprint or ''}"

    def heartbeat(self) -> None:
        """Say this process is alive (its pending claims are not a dead owner's)."""
        with _redis_errors():
            self._client.set(self._heartbeat_key(self._owner), "1", ex=HEARTBEAT_TTL_S)

    def alive(self, owners: Iterable[str]) -> set[str]:
        owners = [owner for owner in dict.fromkeys(owners) if owner]
        if not owners:
            return set()
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(self._heartbeat_key(owner))
            answers = pipe.execute()
        return {owner for owner, exists in zip(owners, answers) if exists}

    def claim_many(self, identities: Iterable[str],
                   fingerprints: dict[str, str | None] | None = None) -> dict[str, Claim]:
        identities = list(dict.fromkeys(identities))
        fingerprints = fingerprints or {}
        now = time.time()
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                self._claim(keys=[self._key(name), self._pending_key],
                            args=[self._pending_value(fingerprints.get(name), now),
                                  self._settings.ttl_s, name, f"{now:.3f}"],
                            client=pipe)
            answers = pipe.execute()
        holders = [_parse(answer[1])[1] for answer in answers
                   if not answer[0] and _parse(answer[1])[0] == PENDING]
        living = self.alive(owner for owner in holders if owner != self._owner)
        claims = {name: self._read_claim(name, answer[0], answer[1], fingerprints.get(name),
                                         living)
                  for name, answer in zip(identities, answers)}
        with self._lock:
            self._in_flight.update(name for name, claim in claims.items() if claim.mine)
        return claims

    def _read_claim(self, name: str, created: int, value: str, fingerprint: str | None,
                    living: set[str]) -> Claim:
        state, owner, since, stored = _parse(value)
        stored = stored or None
        if created:
            return Claim(name, mine=True, value=value, fingerprint=stored)
        if state == DONE:
            return Claim(name, mine=False, done=True, fingerprint=stored)
        if owner == self._owner:
            with self._lock:
                in_flight = name in self._in_flight
            if in_flight:
                # The same event twice in flight in this process: the first copy publishes.
                return Claim(name, mine=False, done=True, fingerprint=stored)
            # Ours, but no bundle of ours is publishing it: a bundle failed after claiming.
            return Claim(name, mine=False, holder=owner, since=since, value=value, stale=True,
                         fingerprint=stored)
        return Claim(name, mine=False, holder=owner, since=since, value=value,
                     stale=owner not in living, fingerprint=stored)

    def take_over(self, claim: Claim, fingerprint: str | None = None) -> bool:
        """Claim an identity whose holder is gone or too slow (compare and set)."""
        now = time.time()
        with _redis_errors():
            taken = bool(self._take_over(
                keys=[self._key(claim.identity), self._pending_key],
                args=[claim.value, self._pending_value(fingerprint, now), self._settings.ttl_s,
                      claim.identity, f"{now:.3f}"]))
        if taken:
            with self._lock:
                self._in_flight.add(claim.identity)
        return taken

    def renew(self, identities: Iterable[str],
              fingerprints: dict[str, str | None] | None = None) -> set[str]:
        """Refresh our pending claims' time; returns those still ours (not taken over)."""
        identities = list(dict.fromkeys(identities))
        fingerprints = fingerprints or {}
        now = time.time()
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                self._renew(keys=[self._key(name), self._pending_key],
                            args=[f"{PENDING}|{self._owner}|",
                                  self._pending_value(fingerprints.get(name), now),
                                  self._settings.ttl_s, name, f"{now:.3f}"], client=pipe)
            answers = pipe.execute()
        ours = {name for name, renewed in zip(identities, answers) if renewed}
        with self._lock:
            self._in_flight.difference_update(set(identities) - ours)
        return ours

    def abandon(self, identities: Iterable[str]) -> None:
        """A bundle that claimed these failed: they stay pending (a retry re-examines them
        by reading back the topics), but are no longer in flight here."""
        with self._lock:
            self._in_flight.difference_update(identities)

    def mark_done(self, identities: Iterable[str],
                  fingerprints: dict[str, str | None] | None = None) -> None:
        identities = list(identities)
        if not identities:
            return
        fingerprints = fingerprints or {}
        now = time.time()
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                pipe.set(self._key(name),
                         f"{DONE}|{self._owner}|{now:.3f}|{fingerprints.get(name) or ''}",
                         ex=self._settings.ttl_s)
            pipe.zrem(self._pending_key, *identities)
            pipe.execute()
        self.abandon(identities)

    def release(self, identities: Iterable[str]) -> None:
        """Forget claims whose outcome never reached the broker: the replay publishes it."""
        identities = list(identities)
        if not identities:
            return
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                pipe.delete(self._key(name))
            pipe.zrem(self._pending_key, *identities)
            pipe.execute()
        self.abandon(identities)

    def pending(self) -> dict[str, tuple[str, float]]:
        """identity -> (owner, claimed at) for every claim not yet marked done.

        Entries older than the key TTL (their keys are gone) are trimmed on the way.
        """
        cutoff = time.time() - self._settings.ttl_s
        with _redis_errors():
            self._client.zremrangebyscore(self._pending_key, "-inf", cutoff)
            names = self._client.zrange(self._pending_key, 0, -1)
            values = self._client.mget([self._key(name) for name in names]) if names else []
        found, vanished = {}, []
        for name, value in zip(names, values):
            if value is None or _parse(value)[0] != PENDING:
                vanished.append(name)  # expired, or done by a process that died mid-update
                continue
            _state, owner, since, _fingerprint = _parse(value)
            found[name] = (owner, since)
        if vanished:
            with _redis_errors():
                self._client.zrem(self._pending_key, *vanished)
        return found

    def state(self, identity_: str) -> str | None:
        with _redis_errors():
            value = self._client.get(self._key(identity_))
        return None if value is None else _parse(value)[0]


_STORES: dict[RedisSettings, DedupStore] = {}
_STORES_LOCK = threading.Lock()


def store_for(settings: RedisSettings) -> DedupStore:
    """One store (and Redis connection pool) per process and settings, with its heartbeat."""
    with _STORES_LOCK:
        if settings not in _STORES:
            store = DedupStore(settings.client(), settings)
            with contextlib.suppress(DedupUnavailable):
                store.heartbeat()
            threading.Thread(target=_beat, args=(store,), name="dedup-heartbeat",
                             daemon=True).start()
            _STORES[settings] = store
        return _STORES[settings]


def _beat(store: DedupStore) -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        try:
            store.heartbeat()
        except DedupUnavailable:
            pass  # Redis away: claims are published "dedup unavailable" meanwhile


def settle_pending(store: DedupStore, read_outcome_identities) -> tuple[int, int]:
    """After a crash: a dead owner's pending claims become done (outcome published) or are
    released (it never got there, so the replay publishes it).

    ``read_outcome_identities(since_epoch_s)`` returns the identities of every finding
    and dead letter published since then. Claims of live owners (this process included)
    are left alone. Returns (settled done, released).
    """
    pending = store.pending()
    living = store.alive(owner for owner, _since in pending.values()) | {store.owner}
    orphans = {name: since for name, (owner, since) in pending.items() if owner not in living}
    if not orphans:
        return 0, 0
    published = read_outcome_identities(min(orphans.values()) - 60.0)  # clocks differ a little
    done = [name for name in orphans if name in published]
    released = [name for name in orphans if name not in published]
    store.mark_done(done)
    store.release(released)
    LOG.info("settled the pending claims of a dead predecessor", extra={
        "done": len(done), "released": len(released)})
    return len(done), len(released)

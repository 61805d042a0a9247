"""Effectively-once outcomes: at most one finding or dead letter per event, even across crashes.

Kafka delivers at least once, so a restarted job sees uncommitted events again. A
two-phase claim in Redis, keyed by the event's identity (its ``event_id``, or its
source position when it had none), makes the second sighting a no-op:

1. **claim** ``SET key "pending|<owner>|<time>" NX EX ttl`` (and note it in a pending
   hash) before publishing; only the claimer publishes;
2. **done**: after the broker acknowledged the outcome, ``SET key "done|..." EX ttl``;
   a later sighting of a ``done`` key publishes nothing and just settles its offset.

A job killed between the two phases leaves ``pending`` claims. At start,
``settle_pending`` reads back the tail of the findings and dead-letter topics (from
just before the oldest pending claim): a claim whose outcome is there becomes
``done``; one whose outcome never reached the broker is released, so the replayed
event is published then. A ``pending`` claim of another live process (several
workers) is waited on, and taken over after ``takeover_after_s``: the rare cost is a
duplicate, never a loss.

Keys live ``ttl_s`` (default 7 days): keep it longer than the events topic's
retention, the longest window in which an event can be replayed.

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

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1])}
"""

_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[2])
  return 1
end
return 0
"""


def identity(event_id: str | None, source: SourcePosition) -> str:
    """What makes two records the same event: its event_id, else where it was read."""
    return event_id or f"pos:{source.topic}/{source.partition}/{source.offset}"


def outcome_identity(kind: str, document: dict) -> str:
    """The dedup identity an outcome settles (see ``identity``)."""
    if kind == "finding":
        return document["event_id"]
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
    MEDIMG_REDIS_USERNAME / MEDIMG_REDIS_PASSWORD, or their _FILE variants."""
    url: str
    namespace: str
    ttl_s: int = DEFAULT_TTL_S
    takeover_after_s: float = DEFAULT_TAKEOVER_S
    ssl_cafile: str | None = None

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
            value = read_secret(variable, environ)
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
    done: bool = False      # an outcome was already published: publish nothing
    holder: str | None = None  # another process's pending claim (owner)
    since: float | None = None


class DedupStore:
    def __init__(self, client: redis.Redis, settings: RedisSettings, owner: str = OWNER):
        self._client = client
        self._settings = settings
        self._owner = owner
        self._claim = client.register_script(_CLAIM)
        self._take_over = client.register_script(_TAKE_OVER)
        self._pending_key = f"medimg:pending:{settings.namespace}"

    def _key(self, identity_: str) -> str:
        return f"medimg:dedup:{self._settings.namespace}:{identity_}"

    def _pending_value(self) -> str:
        return f"{PENDING}|{self._owner}|{time.time():.3f}"

    def claim_many(self, identities: Iterable[str]) -> dict[str, Claim]:
        identities = list(dict.fromkeys(identities))
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                self._claim(keys=[self._key(name), self._pending_key],
                            args=[self._pending_value(), self._settings.ttl_s, name],
                            client=pipe)
            answers = pipe.execute()
        # Lua drops a trailing nil from a table: [0] means "exists, but expired since".
        return {name: self._read_claim(name, answer[0], answer[1] if len(answer) > 1 else None)
                for name, answer in zip(identities, answers)}

    def _read_claim(self, name: str, created: int, value: str | None) -> Claim:
        if created:
            return Claim(name, mine=True)
        if value is None:  # expired between SET and GET: try again next round
            return Claim(name, mine=False, holder="expired", since=0.0)
        state, _, rest = value.partition("|")
        if state == DONE:
            return Claim(name, mine=False, done=True)
        owner, _, since = rest.partition("|")
        if owner == self._owner:
            # Our own claim: the same event twice in flight in this process. The first
            # copy publishes; this one is a duplicate.
            return Claim(name, mine=False, done=True)
        return Claim(name, mine=False, holder=owner, since=float(since or 0))

    def take_over(self, claim: Claim) -> bool:
        """Claim an identity another process has held pending too long (compare and set)."""
        old = f"{PENDING}|{claim.holder}|{claim.since:.3f}"
        with _redis_errors():
            return bool(self._take_over(
                keys=[self._key(claim.identity), self._pending_key],
                args=[old, self._pending_value(), self._settings.ttl_s, claim.identity]))

    def mark_done(self, identities: Iterable[str]) -> None:
        identities = list(identities)
        if not identities:
            return
        value = f"{DONE}|{self._owner}|{time.time():.3f}"
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                pipe.set(self._key(name), value, ex=self._settings.ttl_s)
            pipe.hdel(self._pending_key, *identities)
            pipe.execute()

    def release(self, identities: Iterable[str]) -> None:
        """Forget claims whose outcome never reached the broker: the replay publishes it."""
        identities = list(identities)
        if not identities:
            return
        with _redis_errors(), self._client.pipeline(transaction=False) as pipe:
            for name in identities:
                pipe.delete(self._key(name))
            pipe.hdel(self._pending_key, *identities)
            pipe.execute()

    def pending(self) -> dict[str, tuple[str, float]]:
        """identity -> (owner, claimed at) for every claim not yet marked done."""
        found = {}
        with _redis_errors():
            entries = self._client.hgetall(self._pending_key)
        for name, value in entries.items():
            _state, _, rest = value.partition("|")
            owner, _, since = rest.partition("|")
            found[name] = (owner, float(since or 0))
        return found

    def state(self, identity_: str) -> str | None:
        with _redis_errors():
            value = self._client.get(self._key(identity_))
        return None if value is None else value.partition("|")[0]


_STORES: dict[RedisSettings, DedupStore] = {}
_STORES_LOCK = threading.Lock()


def store_for(settings: RedisSettings) -> DedupStore:
    """One store (and Redis connection pool) per process and settings."""
    with _STORES_LOCK:
        if settings not in _STORES:
            _STORES[settings] = DedupStore(settings.client(), settings)
        return _STORES[settings]


def settle_pending(store: DedupStore, read_outcome_identities) -> tuple[int, int]:
    """After a crash: pending claims become done (outcome published) or are released.

    ``read_outcome_identities(since_epoch_s)`` returns the identities of every finding
    and dead letter published since then. Returns (settled done, released).
    """
    pending = store.pending()
    if not pending:
        return 0, 0
    oldest = min(since for _owner, since in pending.values())
    published = read_outcome_identities(oldest - 60.0)  # clocks of workers differ a little
    done = [name for name in pending if name in published]
    released = [name for name in pending if name not in published]
    store.mark_done(done)
    store.release(released)
    LOG.info("settled pending claims after a restart", extra={
        "done": len(done), "released": len(released)})
    return len(done), len(released)

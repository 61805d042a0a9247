"""Two-phase claims for effectively-once outcomes, against fakeredis."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
import redis

from streaming.delivery import dedup
from streaming.delivery.dedup import (DedupStore, DedupUnavailable, RedisSettings, identity,
                                      settle_pending)
from streaming.kafka.ledger import OffsetLedger
from streaming.kafka.sink import Claims
from streaming.contracts.records import OutboundRecord, SourcePosition

SETTINGS = RedisSettings(url="redis://127.0.0.1:6379/0", namespace="test-group", ttl_s=600,
                         takeover_after_s=0.5)


@pytest.fixture
def server():
    return fakeredis.FakeServer()


def store(server, owner: str) -> DedupStore:
    return DedupStore(fakeredis.FakeRedis(server=server, decode_responses=True), SETTINGS, owner)


def record(event_id: str | None, offset: int) -> OutboundRecord:
    return OutboundRecord(kind=OutboundRecord.FINDING, key=b"1.2.3",
                          value=json.dumps({"event_id": event_id}).encode(),
                          source=SourcePosition("image-events", 0, offset), source_payload=b"{}",
                          event_id=event_id)


def test_the_first_claim_wins_and_a_done_event_is_not_published_again(server):
    first, second = store(server, "job-a"), store(server, "job-b")
    assert first.claim_many(["e1"])["e1"].mine
    assert not second.claim_many(["e1"])["e1"].mine  # pending elsewhere
    first.mark_done(["e1"])
    claim = second.claim_many(["e1"])["e1"]
    assert claim.done and not claim.mine
    assert first.pending() == {}


def test_a_restart_settles_pending_claims_from_what_reached_the_topics(server):
    crashed = store(server, "job-before-crash")
    crashed.claim_many(["published", "lost"])  # then SIGKILL: nothing marked done
    restarted = store(server, "job-after-restart")
    asked = []

    def read_back(since):
        asked.append(since)
        return {"published", "someone-else"}

    assert settle_pending(restarted, read_back) == (1, 1)
    assert asked[0] < time.time() - 59  # reads from before the oldest claim
    assert restarted.state("published") == "done"
    assert restarted.state("lost") is None  # released: the replayed event will be published
    assert restarted.claim_many(["lost"])["lost"].mine
    assert not restarted.claim_many(["published"])["published"].mine


def test_another_workers_stale_claim_is_taken_over(server):
    quiet = store(server, "worker-that-died")
    quiet.claim_many(["e9"])
    taker = store(server, "worker-alive")
    claim = taker.claim_many(["e9"])["e9"]
    assert claim.holder == "worker-that-died"
    assert taker.take_over(claim)
    assert not quiet.take_over(claim)  # compare-and-set: only one taker


def test_events_without_id_are_identified_by_position():
    source = SourcePosition("image-events", 2, 40)
    assert identity(None, source) == "pos:image-events/2/40"
    assert identity("e-1", source) == "e-1"


def test_credentials_never_travel_in_the_url():
    with pytest.raises(ValueError, match="credentials"):
        RedisSettings(url="redis://user:secret@host:6379/0", namespace="g")
    with pytest.raises(ValueError, match="redis://"):
        RedisSettings(url="http://host", namespace="g")


def test_credentials_come_from_the_environment(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    client = SETTINGS.client({"MEDIMG_REDIS_USERNAME": "medimg",
                              "MEDIMG_REDIS_PASSWORD_FILE": str(secret)})
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["username"] == "medimg" and kwargs["password"] == "s3cret"


@pytest.fixture
def claims(server, monkeypatch):
    monkeypatch.setitem(dedup._STORES, SETTINGS, store(server, dedup.OWNER))
    ledger = OffsetLedger()
    return Claims(SETTINGS, ledger), ledger


def test_the_sink_publishes_each_event_once_and_settles_duplicates(claims, server):
    sink_claims, ledger = claims
    batch = [record("a", 0), record("b", 1), record("a", 2)]  # "a" twice in one bundle
    for r in batch:
        ledger.read(r.source)
    to_publish = sink_claims.claim(batch)
    assert [r.event_id for r in to_publish] == ["a", "b"]
    for r in to_publish:
        ledger.settle(r.source)
    sink_claims.done(to_publish)
    assert ledger.to_commit("image-events", 0) == 3
    # A replay after a restart (another process) publishes nothing.
    replayed = Claims(SETTINGS, OffsetLedger())
    dedup._STORES[SETTINGS] = store(server, "after-restart")
    assert replayed.claim([record("a", 0), record("b", 1)]) == []


def test_an_unreachable_store_publishes_marked_outcomes(monkeypatch):
    broken = DedupStore(redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2),
                        SETTINGS, "job")
    monkeypatch.setitem(dedup._STORES, SETTINGS, broken)
    published = Claims(SETTINGS, OffsetLedger()).claim([record("a", 0)])
    assert json.loads(published[0].value)["dedup"] == "unavailable"
    with pytest.raises(DedupUnavailable):
        broken.claim_many(["a"])


def test_a_live_holder_is_waited_for_then_taken_over(claims, server):
    sink_claims, _ledger = claims
    store(server, "slow-worker").claim_many(["x"])
    assert [r.event_id for r in sink_claims.claim([record("x", 5)])] == ["x"]
    assert store(server, "anyone").pending()["x"][0] == dedup.OWNER  # the claim is ours now


def test_an_unreadable_password_file_is_named_not_a_bare_os_error(tmp_path):
    from streaming.runtime.secrets import SecretUnreadable  # noqa: PLC0415

    with pytest.raises(SecretUnreadable, match="MEDIMG_REDIS_PASSWORD_FILE names .*missing"):
        SETTINGS.client({"MEDIMG_REDIS_PASSWORD_FILE": str(tmp_path / "missing")})

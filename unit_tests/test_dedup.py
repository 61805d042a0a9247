"""Two-phase claims for effectively-once outcomes, against fakeredis."""

from __future__ import annotations

import dataclasses
import json
import time

import fakeredis
import pytest
import redis

from streaming.delivery import dedup
from streaming.delivery.dedup import (DedupStore, DedupUnavailable, RedisSettings, identity,
                                      settle_pending)
from streaming.contracts import validation
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


class Topics:
    """What a read-back of the findings and dead-letter topics would find."""

    def __init__(self):
        self.published: set[str] = set()
        self.reads: list[float] = []

    def __call__(self, since: float) -> set[str]:
        self.reads.append(since)
        return set(self.published)


def new_claims(ledger=None, topics=None) -> Claims:
    return Claims(SETTINGS, ledger or OffsetLedger(), topics or Topics(), payload_limit=1024)


@pytest.fixture
def claims(server, monkeypatch):
    monkeypatch.setitem(dedup._STORES, SETTINGS, store(server, dedup.OWNER))
    ledger = OffsetLedger()
    return new_claims(ledger), ledger


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
    replayed = new_claims()
    dedup._STORES[SETTINGS] = store(server, "after-restart")
    assert replayed.claim([record("a", 0), record("b", 1)]) == []


def test_an_unreachable_store_publishes_marked_outcomes(monkeypatch):
    broken = DedupStore(redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2),
                        SETTINGS, "job")
    monkeypatch.setitem(dedup._STORES, SETTINGS, broken)
    published = new_claims().claim([record("a", 0)])
    assert json.loads(published[0].value)["dedup"] == "unavailable"
    with pytest.raises(DedupUnavailable):
        broken.claim_many(["a"])


def test_a_live_holder_is_waited_for_then_taken_over(claims, server):
    sink_claims, _ledger = claims
    slow = store(server, "slow-worker")
    slow.heartbeat()  # alive, but silent past takeover_after_s
    slow.claim_many(["x"])
    assert [r.event_id for r in sink_claims.claim([record("x", 5)])] == ["x"]
    assert store(server, "anyone").pending()["x"][0] == dedup.OWNER  # the claim is ours now


def test_an_unreadable_password_file_is_named_not_a_bare_os_error(tmp_path):
    from streaming.runtime.secrets import SecretUnreadable  # noqa: PLC0415

    with pytest.raises(SecretUnreadable, match="MEDIMG_REDIS_PASSWORD_FILE names .*missing"):
        SETTINGS.client({"MEDIMG_REDIS_PASSWORD_FILE": str(tmp_path / "missing")})


# -- claims that never lose and never repeat -------------------------------------------

def event_payload(uri: str, sha256: str = "ab" * 32) -> bytes:
    return json.dumps({"event_id": "e", "study_instance_uid": "1.2.3",
                       "series_instance_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5",
                       "uri": uri, "sha256": sha256, "sent_at": str(time.time())}).encode()


def event_record(event_id: str, offset: int, uri: str = "/store/a.dcm") -> OutboundRecord:
    payload = event_payload(uri)
    return OutboundRecord(kind=OutboundRecord.FINDING, key=b"1.2.3",
                          value=json.dumps({"event_id": event_id,
                                            "study_instance_uid": "1.2.3"}).encode(),
                          source=SourcePosition("image-events", 0, offset),
                          source_payload=payload, event_id=event_id)


def test_a_bundle_retried_in_the_same_process_publishes_what_its_failed_try_claimed(claims):
    """Point 1: the failed try's claim is ours and pending; it must not count as done."""
    sink, ledger = claims
    ledger.read(SourcePosition("image-events", 0, 7))
    first_try = sink.claim([record("r1", 7)])
    assert [r.event_id for r in first_try] == ["r1"]
    sink.abandon(first_try)  # finish_bundle raised before publishing: the runner retries
    retry = sink.claim([record("r1", 7)])
    assert [r.event_id for r in retry] == ["r1"]  # published on the retry, not skipped
    assert ledger.to_commit("image-events", 0) is None  # nothing settled without an outcome


def test_a_retry_whose_outcome_did_reach_the_topic_is_settled_not_repeated(server,
                                                                           monkeypatch):
    monkeypatch.setitem(dedup._STORES, SETTINGS, store(server, dedup.OWNER))
    topics, ledger = Topics(), OffsetLedger()
    ledger.read(SourcePosition("image-events", 0, 3))
    sink = new_claims(ledger, topics)
    sink.abandon(sink.claim([record("r2", 3)]))  # sent, acknowledged, then the bundle failed
    topics.published.add("r2")
    assert sink.claim([record("r2", 3)]) == []
    assert store(server, "anyone").state("r2") == "done"
    assert ledger.to_commit("image-events", 0) == 4


def test_a_takeover_reads_back_before_publishing(claims, server):
    """Point 2: a worker that died between the broker's ack and mark_done left its outcome."""
    sink, _ledger = claims
    store(server, "died-after-the-ack").claim_many(["t1"])  # no heartbeat: dead
    sink._read_back.published.add("t1")  # noqa: SLF001 - what the read-back finds
    assert sink.claim([record("t1", 9)]) == []
    assert store(server, "anyone").state("t1") == "done"


def test_a_live_holder_retrying_through_an_outage_keeps_its_claim(server):
    holder, other = store(server, "retrying"), store(server, "other")
    holder.heartbeat()
    holder.claim_many(["o1"])
    time.sleep(SETTINGS.takeover_after_s + 0.1)
    assert holder.renew(["o1"]) == {"o1"}  # what the sink does while it waits
    claim = other.claim_many(["o1"])["o1"]
    assert not claim.stale and time.time() - claim.since < SETTINGS.takeover_after_s


def test_a_taken_over_claim_is_not_re_sent_by_its_old_holder(server, monkeypatch):
    monkeypatch.setitem(dedup._STORES, SETTINGS, store(server, dedup.OWNER))
    ledger = OffsetLedger()
    ledger.read(SourcePosition("image-events", 0, 4))
    sink = new_claims(ledger)
    mine = sink.claim([record("o2", 4)])
    taker = store(server, "taker")
    claim = taker.claim_many(["o2"])["o2"]
    assert taker.take_over(dataclasses.replace(claim, stale=True))
    sink.renew(mine)  # the old holder, about to re-send after an outage
    assert sink.drop_taken(mine) == []
    assert ledger.to_commit("image-events", 0) == 5


def test_settlement_runs_once_per_worker_and_spares_live_owners(server, monkeypatch):
    """Point 3: in the worker (the sink's set-up), not only in the launcher."""
    from streaming.kafka.sink import WriterSettings, settle_once  # noqa: PLC0415
    monkeypatch.setitem(dedup._STORES, SETTINGS, store(server, "new-worker"))
    monkeypatch.setattr("streaming.kafka.sink._SETTLED", set())
    store(server, "killed").claim_many(["k1", "k2"])
    alive = store(server, "alive")
    alive.heartbeat()
    alive.claim_many(["a1"])
    writer = WriterSettings(config=None, group_id="g", findings_topic="f",
                            dead_letter_topic="d", dedup=SETTINGS)
    topics = Topics()
    topics.published.add("k1")
    settle_once(writer, topics)
    settle_once(writer, topics)
    assert len(topics.reads) == 1
    states = {name: store(server, "x").state(name) for name in ("k1", "k2", "a1")}
    assert states == {"k1": "done", "k2": None, "a1": "pending"}


def test_an_unfinishable_read_back_never_stops_a_start(server, monkeypatch):
    """Point 4: a warning and a metric, not a failed start."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    from streaming.kafka.sink import WriterSettings, settle_once  # noqa: PLC0415
    monkeypatch.setitem(dedup._STORES, SETTINGS, store(server, "new-worker"))
    monkeypatch.setattr("streaming.kafka.sink._SETTLED", set())
    store(server, "killed").claim_many(["slow"])

    def read_back(since):
        raise TimeoutError("could not read findings to its end within 300 s")

    before = REGISTRY.get_sample_value("medimg_dedup_total", {"result": "settle_failed"}) or 0
    settle_once(WriterSettings(config=None, group_id="g", findings_topic="f",
                               dead_letter_topic="d", dedup=SETTINGS), read_back)
    assert REGISTRY.get_sample_value("medimg_dedup_total", {"result": "settle_failed"}) == \
        before + 1


def test_pending_entries_past_the_ttl_are_trimmed(server):
    old = store(server, "long-gone")
    old.claim_many(["ancient", "recent"])
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    key = f"medimg:pending-claims:{SETTINGS.namespace}"
    client.zadd(key, {"ancient": time.time() - SETTINGS.ttl_s - 10})
    assert set(old.pending()) == {"recent"}
    assert client.zscore(key, "ancient") is None


def test_a_reused_event_id_naming_another_image_becomes_a_conflict_dead_letter(claims):
    """Point 5: same event_id, other URI: dead-lettered, and only once across replays."""
    sink, _ledger = claims
    first = sink.claim([event_record("dup", 0, uri="/store/a.dcm")])
    sink.done(first)
    resent = sink.claim([event_record("dup", 1, uri="/store/a.dcm")])  # honest re-send
    assert resent == []
    conflicting = event_record("dup", 2, uri="/store/b.dcm")
    other = sink.claim([conflicting])
    assert len(other) == 1 and other[0].kind == OutboundRecord.DEAD_LETTER
    letter = json.loads(other[0].value)
    assert letter["reason"] == "event_id_conflict" and letter["event_id"] == "dup"
    assert validation.errors(validation.DEAD_LETTER, letter, strict=True) == []
    sink.done(other)
    assert sink.claim([conflicting]) == []  # the same record replayed: one dead letter
    assert dedup.outcome_identity("dead_letter", letter) == other[0].dedup_identity


def test_two_contents_for_one_event_id_in_one_bundle_are_told_apart(claims):
    sink, _ledger = claims
    first = event_record("same", 0, uri="/store/a.dcm")
    other = event_record("same", 1, uri="/store/b.dcm")
    published = sink.claim([first, other, event_record("same", 2, uri="/store/a.dcm")])
    assert [(r.kind, r.event_id) for r in published] == [
        (OutboundRecord.FINDING, "same"), (OutboundRecord.DEAD_LETTER, "same")]

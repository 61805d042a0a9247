"""The sink against a real broker: waits out an outage, dead-letters what can never fit."""

from __future__ import annotations

import json
import threading
import time

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

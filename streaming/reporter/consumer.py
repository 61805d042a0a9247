"""The reporter's loop over the findings topic, off the job's hot path.

Findings are handled one at a time in partition order; a partition's offset is
committed (the reporter's own consumer group) only once the finding's report is in
the PACS or its dead letter is acknowledged (``acks=all``), so a stopped reporter
resumes where it stopped and never skips one. Reports are idempotent, so a finding
handled again after a crash adds nothing to the PACS. Logs name finding ids and
UIDs only: the reporter sees patient identity only inside the DICOM it sends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streaming.contracts import validation
from streaming.contracts.dead_letters import Rejection, Stage, build_dead_letter
from streaming.contracts.reasons import Reason
from streaming.contracts.records import SourcePosition
from streaming.kafka.admin import ensure_topics, wait_for_partitions
from streaming.kafka.config import KafkaConfig
from streaming.reporter.reports import Reporter, ReportRejected
from streaming.runtime import lifecycle

LOG = logging.getLogger(__name__)
DEFAULT_DEAD_LETTER_TOPIC = "report-dead-letters"
DEFAULT_GROUP = "medimg-report"


@dataclasses.dataclass
class ReportCounts:
    reported: int = 0
    already_stored: int = 0
    skipped: int = 0
    dead_letters: int = 0

    @property
    def handled(self) -> int:
        return self.reported + self.already_stored + self.skipped + self.dead_letters


def run_reporter(config: KafkaConfig, reporter: Reporter, *, findings_topic: str = "findings",
                 dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC, group: str = DEFAULT_GROUP,
                 idle_timeout_s: float | None = None, limit: int | None = None,
                 stop: Callable[[], bool] = lifecycle.drain_requested) -> ReportCounts:
    """Report findings until ``stop()``, ``limit`` findings, or ``idle_timeout_s`` without one."""
    ensure_topics(config, {dead_letter_topic: 1})
    consumer = KafkaConsumer(**config.client_kwargs(), group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    producer = KafkaProducer(**config.client_kwargs(), acks="all", linger_ms=0)
    counts = ReportCounts()
    try:
        # Explicit assignment: a group join takes many seconds on some brokers, and one
        # reporter per group reads every partition anyway.
        partitions = [TopicPartition(findings_topic, p)
                      for p in wait_for_partitions(consumer, config, findings_topic)]
        consumer.assign(partitions)
        for tp in partitions:
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        last_record = time.monotonic()
        while not stop() and (limit is None or counts.handled < limit):
            batches = consumer.poll(timeout_ms=500, max_records=1)
            if not batches:
                if idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for tp, records in batches.items():
                for record in records:
                    _handle(record, reporter, producer, dead_letter_topic, counts)
                    consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
    finally:
        producer.close(timeout=10)
        consumer.close(autocommit=False)
    return counts


def _handle(record, reporter: Reporter, producer: KafkaProducer, dead_letter_topic: str,
            counts: ReportCounts) -> None:
    position = SourcePosition(record.topic, record.partition, record.offset)
    finding = None
    try:
        finding = _parse(record.value)
        outcome = reporter.report(finding)
    except ReportRejected as rejected:
        _dead_letter(producer, dead_letter_topic, position, record.value, finding, rejected)
        counts.dead_letters += 1
        return
    if outcome.skipped:
        counts.skipped += 1
    elif outcome.already_stored:
        counts.already_stored += 1
        LOG.info("report already in the PACS", extra={"finding_id": outcome.finding_id})
    else:
        counts.reported += 1
        LOG.info("report stored", extra={"finding_id": outcome.finding_id,
                                         "sop_instance_uids": list(outcome.stored)})


def _parse(value: bytes | None) -> dict:
    try:
        finding = json.loads(value or b"")
    except ValueError:
        raise ReportRejected(Reason.REPORT_FAILED, "the record is not JSON") from None
    problems = validation.errors(validation.FINDING, finding)
    if problems:
        raise ReportRejected(Reason.REPORT_FAILED, "the record is not a v1 finding: "
                             + "; ".join(problems)[:1024])
    return finding


def _dead_letter(producer: KafkaProducer, topic: str, position: SourcePosition, payload: bytes,
                 finding: dict | None, rejected: ReportRejected) -> None:
    finding = finding or {}
    document = build_dead_letter(
        Rejection(rejected.reason, str(rejected), Stage.REPORT), position, payload or b"",
        event_id=finding.get("event_id"), study_instance_uid=finding.get("study_instance_uid"),
        model=finding.get("model"),
        # Its own id space: never equal to the job's dead letter for the same event.
        id_from=f"report:{finding.get('finding_id') or position.offset}")
    key = (finding.get("study_instance_uid") or f"{position.topic}/{position.partition}").encode()
    producer.send(topic, key=key, value=json.dumps(document).encode()).get(timeout=60)
    LOG.warning("finding not reported", extra={"finding_id": finding.get("finding_id"),
                                               "reason": rejected.reason.value,
                                               "detail": str(rejected)})

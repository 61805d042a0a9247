"""Findings: the job's result for one image event, as downstream alerting reads it.

The contract is schemas/finding.v1.json. ``finding_id`` depends on the event_id
only, so a replayed event gets the same id whichever model version scores it.
"""

from __future__ import annotations

import json
import time
import uuid

from streaming.runtime import metrics
from streaming.contracts.events import ImageEvent
from streaming.modeling.scoring import Scoring
from streaming.contracts.records import KafkaRecord, OutboundRecord, utc_iso

FINDING_NAMESPACE = uuid.UUID("0b6a3f0e-35c9-4a53-8f8e-5c1d9d1f2e77")


def finding_id(event_id: str) -> str:
    return str(uuid.uuid5(FINDING_NAMESPACE, event_id))


def build_finding(event: ImageEvent, record: KafkaRecord, scoring: Scoring,
                  emitted_at: float | None = None) -> dict:
    """The finding document for one scored or not-applicable event."""
    emitted_at = time.time() if emitted_at is None else emitted_at
    decision = scoring.decision
    scored = scoring.status == Scoring.SCORED
    urgent = event.urgent or bool(
        scored and decision.positive and decision.positive_score >= scoring.urgent_threshold)
    document = {
        "schema_version": 1,
        "finding_id": finding_id(event.event_id),
        "event_id": event.event_id,
        "study_instance_uid": event.study_instance_uid,
        "series_instance_uid": event.series_instance_uid,
        "sop_instance_uid": event.sop_instance_uid,
        "modality": scoring.modality or event.modality,
        "status": scoring.status,
        "model": {"name": scoring.model_name, "version": scoring.model_version},
        "scores": decision.scores if scored else {},
        "label": decision.label if scored else None,
        "threshold": scoring.threshold if scored else None,
        "positive": bool(scored and decision.positive),
        "urgent": urgent,
        "priority": event.priority,
        "event_sent_at": event.sent_at,
        "received_at": utc_iso(record.received_at),
        "emitted_at": utc_iso(emitted_at),
        "latency_ms": round((emitted_at - event.sent_at_epoch) * 1000.0, 3),
    }
    if scoring.status == Scoring.NOT_APPLICABLE:
        document["not_applicable_reason"] = scoring.not_applicable_reason
    if scoring.frame_count > 1:
        document["frame"] = {"index": scoring.frame_index, "count": scoring.frame_count}
    return document


def finding_record(event: ImageEvent, record: KafkaRecord, scoring: Scoring) -> OutboundRecord:
    document = build_finding(event, record, scoring)
    metrics.count("findings", scoring.status)
    if document["urgent"]:
        metrics.count("urgent_findings")
    return OutboundRecord(kind=OutboundRecord.FINDING,
                          key=event.study_instance_uid.encode("utf-8"),
                          value=json.dumps(document, separators=(",", ":")).encode("utf-8"),
                          source=record.position, source_payload=record.value,
                          event_id=event.event_id, sent_at_epoch=event.sent_at_epoch)

"""Dead letters: every event the job cannot turn into a finding, with the reason why.

A dead letter carries the event as received (truncated to a configurable size, with
its sha256 and size so nothing is ambiguous), where it was read from, a reason code
from schemas/dead_letter.v1.json and a message built only from our own templates:
library error text can echo DICOM element values, which may be patient identity.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
import uuid

from streaming.runtime import metrics
from streaming.contracts.reasons import Reason
from streaming.contracts.records import OutboundRecord, SourcePosition, utc_iso

# Fixed namespace: the same event always maps to the same dead_letter_id.
DEAD_LETTER_NAMESPACE = uuid.UUID("6f1d3c5e-8a4b-4f0e-9a55-0d7c2b1e4a90")
DEFAULT_PAYLOAD_BYTES = 16 * 1024


class Stage:
    PARSE = "parse"
    LOAD = "load"
    INFERENCE = "inference"
    PUBLISH = "publish"
    # medimg report: a finding that could not become a DICOM report in the PACS.
    REPORT = "report"


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why one event became a dead letter, before it is written down."""
    reason: Reason
    message: str
    stage: str


def dead_letter_id(event_id: str | None, source: SourcePosition) -> str:
    name = (f"event:{event_id}" if event_id
            else f"position:{source.topic}/{source.partition}/{source.offset}")
    return str(uuid.uuid5(DEAD_LETTER_NAMESPACE, name))


def payload_excerpt(payload: bytes | None, limit: int) -> dict:
    """The received bytes, as text when they are UTF-8, else base64; cut to ``limit`` bytes.

    A record without a value (a Kafka tombstone) is kept as empty text.
    """
    payload = payload or b""
    kept = payload[:max(limit, 0)]
    text = _utf8(kept, truncated=len(kept) < len(payload))
    if text is None:
        data, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    else:
        data, encoding = text, "utf-8"
    return {"encoding": encoding, "data": data, "size_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(), "truncated": len(kept) < len(payload)}


def _utf8(data: bytes, truncated: bool) -> str | None:
    # A cut can split a multi-byte character: drop up to three trailing bytes.
    for cut in range(4 if truncated else 1):
        try:
            return data[:len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def build_dead_letter(rejection: Rejection, source: SourcePosition, payload: bytes, *,
                      event_id: str | None = None, study_instance_uid: str | None = None,
                      model: dict | None = None,
                      payload_limit: int = DEFAULT_PAYLOAD_BYTES,
                      id_from: str | None = None) -> dict:
    """``id_from``: what the dead_letter_id derives from, when not the event itself (a
    conflict dead letter is about one record of a reused event_id)."""
    document = {
        "schema_version": 1,
        "dead_letter_id": dead_letter_id(id_from or event_id, source),
        "event_id": event_id,
        "study_instance_uid": study_instance_uid,
        "reason": Reason(rejection.reason).value,
        "message": rejection.message[:2048],
        "stage": rejection.stage,
        "source": source.to_dict(),
        "payload": payload_excerpt(payload, payload_limit),
        "created_at": utc_iso(time.time()),
    }
    if model:
        document["model"] = {"name": model["name"], "version": model["version"]}
    return document


def dead_letter_record(rejection: Rejection, source: SourcePosition, payload: bytes, *,
                       event_id: str | None = None, study_instance_uid: str | None = None,
                       model: dict | None = None,
                       payload_limit: int = DEFAULT_PAYLOAD_BYTES,
                       id_from: str | None = None,
                       sent_at_epoch: float | None = None) -> OutboundRecord:
    """The outbound record for a dead letter, keyed like its event (study UID when known)."""
    document = build_dead_letter(rejection, source, payload, event_id=event_id,
                                 study_instance_uid=study_instance_uid, model=model,
                                 payload_limit=payload_limit, id_from=id_from)
    metrics.count("dead_letters", document["reason"])
    key = study_instance_uid or f"{source.topic}/{source.partition}/{source.offset}"
    return OutboundRecord(kind=OutboundRecord.DEAD_LETTER, key=key.encode("utf-8"),
                          value=json.dumps(document, separators=(",", ":")).encode("utf-8"),
                          source=source, source_payload=payload, event_id=event_id,
                          dedup_identity=id_from, sent_at_epoch=sent_at_epoch)

"""A simulated modality: image files become image events on the events topic.

For DICOM files the study, series and SOP instance UIDs, modality and body part
come from the header (read without pixel data). PNG and JPEG files carry no UIDs:
they get UIDs derived from their path, so the same file always names the same study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from kafka import KafkaProducer

from streaming.contracts import validation
from streaming.contracts.events import ImageEvent, new_event
from streaming.kafka.config import KafkaConfig
from streaming.contracts.records import utc_iso

LOG = logging.getLogger(__name__)

CONTENT_TYPES = {".dcm": "application/dicom", ".dicom": "application/dicom",
                 ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
                "BodyPartExamined"]


@dataclasses.dataclass
class Inventory:
    """What a walk over the given paths found."""
    events: list[ImageEvent]
    skipped: dict[str, str]  # path -> why it was not published


def image_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly, and every file under named folders, in a stable order."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def content_type_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    if not suffix and _has_dicom_preamble(path):
        return "application/dicom"  # DICOM files from PACS exports often have no suffix
    return None


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _upper_or_none(value) -> str | None:
    value = str(value or "").strip().upper()
    return value or None


def path_uids(path: Path) -> dict[str, str]:
    """UIDs derived from a file's location, for files whose header names none."""
    return {"study_instance_uid": generate_uid(entropy_srcs=[str(path.parent)]),
            "series_instance_uid": generate_uid(entropy_srcs=[str(path.parent), "series"]),
            "sop_instance_uid": generate_uid(entropy_srcs=[str(path)])}


def event_for_file(path: Path, *, sender: str, priority: str = "routine",
                   modality: str = "OT", with_sha256: bool = True) -> ImageEvent:
    """The event a modality would send for one file (ValueError when it is not an image)."""
    content_type = content_type_of(path)
    if content_type is None:
        raise ValueError("not a .dcm, .png or .jpg file")
    path = path.resolve()
    if content_type == "application/dicom":
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError) as error:
            raise ValueError(f"DICOM header unreadable ({type(error).__name__})") from None
        missing = [t for t in _HEADER_TAGS[:3] if not str(header.get(t, "")).strip()]
        if missing:
            raise ValueError(f"DICOM header lacks {', '.join(missing)}")
        uids = {"study_instance_uid": str(header.StudyInstanceUID),
                "series_instance_uid": str(header.SeriesInstanceUID),
                "sop_instance_uid": str(header.SOPInstanceUID)}
        modality = _upper_or_none(header.get("Modality")) or modality
        body_part = _upper_or_none(header.get("BodyPartExamined"))
    else:
        uids, body_part = path_uids(path), None
    event = new_event(**uids, modality=modality, uri=str(path), content_type=content_type,
                      sender=sender, priority=priority,
                      sha256=_sha256(path) if with_sha256 else None,
                      body_part_examined=body_part)
    problems = validation.violated_fields(validation.IMAGE_EVENT, event.to_document())
    if problems:
        # Header values that break the event contract (e.g. UIDs that are not DICOM UIDs).
        raise ValueError("the header does not make a valid event: " + "; ".join(problems))
    return event


def inventory(paths: Iterable[str | os.PathLike], *, sender: str, priority: str = "routine",
              modality: str = "OT", with_sha256: bool = True) -> Inventory:
    events, skipped = [], {}
    for path in image_files(paths):
        try:
            events.append(event_for_file(path, sender=sender, priority=priority,
                                         modality=modality, with_sha256=with_sha256))
        except (ValueError, OSError) as error:
            skipped[str(path)] = str(error)
    return Inventory(events=events, skipped=skipped)


def publish_events(config: KafkaConfig, topic: str, events: Iterable[ImageEvent],
                   rate_per_s: float = 0.0, on_sent=None) -> int:
    """Send events keyed by study UID, at most ``rate_per_s`` a second (0: no limit).

    Each event's ``sent_at`` is set as it is sent. Waits for every acknowledgement (acks=all) before returning the count.
    """
    producer = KafkaProducer(**config.client_kwargs(), acks="all", linger_ms=5)
    sent, futures = 0, []
    started = time.monotonic()
    try:
        for event in events:
            if rate_per_s > 0:
                delay = started + sent / rate_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            # sent_at says when the sender published the event: stamp it now.
            event = dataclasses.replace(event, sent_at=utc_iso(time.time()))
            futures.append(producer.send(topic, value=event.to_json(),
                                         key=event.study_instance_uid.encode("utf-8")))
            sent += 1
            if on_sent:
                on_sent(event)
        producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if the broker refused an event
    finally:
        producer.close()
    return sent


def publish_raw(config: KafkaConfig, topic: str, payloads: Iterable[bytes],
                key: bytes | None = None) -> int:
    """Send payloads exactly as given (a misbehaving sender, a replayed record); acks=all."""
    producer = KafkaProducer(**config.client_kwargs(), acks="all")
    try:
        futures = [producer.send(topic, value=payload, key=key) for payload in payloads]
        producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if the broker refused one
    finally:
        producer.close()
    return len(futures)


def restamp(event: ImageEvent) -> ImageEvent:
    """The same image announced again now, as a new event (a modality re-sending it)."""
    return new_event(**{
        k: v for k, v in dataclasses.asdict(event).items() if k not in ("event_id", "sent_at")})

"""One received instance: stored durably, then announced; both or a refusal saying why.

Shared by the C-STORE SCP and the STOW-RS endpoint. The order is what makes a
success answer safe: the file is on disk (fsync, atomic rename) before the event is
sent, and the event is acknowledged by the broker (acks=all) before the sender hears
success. The event_id is uuid5 of the SOP instance UID and the file's sha256, so an
instance sent again (a retry, or a resend after a crash between the broker's ack and
the answer) is announced with the same event_id and the job's dedup recognises it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from typing import BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError

from streaming.contracts import validation
from streaming.contracts.events import ImageEvent, new_event
from streaming.gateway import metrics
from streaming.gateway.announcing import Announcer, BrokerUnavailable
from streaming.gateway.storage import InstanceStore, InstanceTooLarge, StorageFailed
from streaming.runtime.logs import silence_phi_sources

LOG = logging.getLogger(__name__)

# Fixed forever: changing it would give re-sent instances new event_ids.
EVENT_NAMESPACE = uuid.UUID("9b7f3f5e-2f0c-5a53-8d0e-6d8b7c1a4e21")
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
                "BodyPartExamined"]
_RECENT = 4096  # event_ids acknowledged lately; a resend of one is not announced again


def event_id_for(sop_instance_uid: str, sha256: str) -> str:
    """The same instance with the same bytes always gets the same event_id."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{sop_instance_uid}/{sha256}"))


class Refusal(Exception):
    """The instance was not accepted; ``reason`` is a metric code, ``retry`` says whether
    sending it again later can succeed."""

    def __init__(self, reason: str, message: str, retry: bool):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


@dataclasses.dataclass(frozen=True)
class Accepted:
    event: ImageEvent
    announced_now: bool  # False: the same event was acknowledged earlier


@dataclasses.dataclass(frozen=True)
class Header:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str
    body_part_examined: str | None


def read_header(path) -> Header:
    """The UIDs, modality and body part of a stored instance (no pixel data is read)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise Refusal("unreadable_header", "the instance's DICOM header cannot be read "
                      f"({type(error).__name__})", retry=False) from None
    missing = [t for t in _HEADER_TAGS[:3] if not str(header.get(t, "")).strip()]
    if missing:
        raise Refusal("missing_uids", f"the header lacks {', '.join(missing)}", retry=False)

    def upper(value) -> str | None:
        return str(value or "").strip().upper() or None

    return Header(str(header.StudyInstanceUID).strip(), str(header.SeriesInstanceUID).strip(),
                  str(header.SOPInstanceUID).strip(), upper(header.get("Modality")) or "OT",
                  upper(header.get("BodyPartExamined")))


class Intake:
    def __init__(self, store: InstanceStore, announcer: Announcer, events_topic: str,
                 priority: str = "routine", on_announced=None):
        # pydicom quotes invalid header values (patient identity) in warnings and logs.
        silence_phi_sources()
        self.store = store
        self.announcer = announcer
        self.events_topic = events_topic
        self.priority = priority
        self.on_announced = on_announced  # (event) -> None, e.g. series tracking
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def accept(self, source: BinaryIO, sender: str, protocol: str,
               received_at: float | None = None) -> Accepted:
        """Store and announce one instance read from ``source``; Refusal says why not."""
        received_at = received_at or time.monotonic()
        metrics.RECEIVED.labels(protocol).inc()
        try:
            try:
                # The header is checked before the file is committed: what cannot be
                # announced is not stored either.
                stored = self.store.store(source, inspect=self._announceable_header)
            except InstanceTooLarge as error:
                raise Refusal("too_large", str(error), retry=False) from None
            except StorageFailed as error:
                raise Refusal("storage_failed", f"the storage root cannot take the instance "
                              f"({error})", retry=True) from None
            if stored.newly_written:
                metrics.STORED.inc()
            header: Header = stored.inspected
            event = self._event(header, stored.uri, stored.sha256, sender)
            if self._seen(event.event_id):
                LOG.info("instance received again; already announced",
                         extra={"event_id": event.event_id, "sender": sender})
                return Accepted(event, announced_now=False)
            try:
                self.announcer.send(self.events_topic, event.study_instance_uid,
                                    event.to_document())
            except BrokerUnavailable as error:
                raise Refusal("broker_unavailable", str(error), retry=True) from None
        except Refusal as refusal:
            metrics.refused(refusal.reason)
            LOG.warning("instance refused", extra={"reason": refusal.reason, "sender": sender,
                                                   "protocol": protocol,
                                                   "detail": refusal.message})
            raise
        metrics.ANNOUNCED.inc()
        metrics.ANNOUNCE_LATENCY.observe(time.monotonic() - received_at)
        self._remember(event.event_id)
        LOG.info("instance announced", extra={"event_id": event.event_id, "sender": sender,
                                              "protocol": protocol,
                                              "topic": self.events_topic})
        if self.on_announced:
            self.on_announced(event)
        return Accepted(event, announced_now=True)

    def _event(self, header: Header, uri: str, sha256: str, sender: str) -> ImageEvent:
        return new_event(
            event_id=event_id_for(header.sop_instance_uid, sha256),
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid, modality=header.modality,
            body_part_examined=header.body_part_examined, uri=uri,
            content_type="application/dicom", sender=sender, priority=self.priority,
            sha256=sha256)

    def _announceable_header(self, path: str) -> Header:
        """The header, if it makes a valid image event (else the job could only
        dead-letter it, e.g. UIDs that are not DICOM UIDs)."""
        header = read_header(path)
        provisional = self._event(header, path, "0" * 64, "GATEWAY")
        problems = validation.violated_fields(validation.IMAGE_EVENT,
                                              provisional.to_document())
        if problems:
            raise Refusal("invalid_header", "the header does not make a valid image "
                          "event: " + "; ".join(problems), retry=False)
        return header

    def _seen(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._recent

    def _remember(self, event_id: str) -> None:
        with self._lock:
            self._recent[event_id] = None
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

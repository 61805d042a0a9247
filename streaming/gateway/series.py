"""Series completeness for consumers that need whole series: DICOM has no "series done"
message, so a series is called complete once no instance of it arrived for a stable age
(``--series_complete_s``, like Orthanc's StableAge), and a notice goes to its own topic.

Notices never go to the events topic: the job would dead-letter them. An instance that
arrives after its series' notice starts the series again, and a new notice follows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import uuid

from streaming.contracts import validation
from streaming.contracts.events import ImageEvent
from streaming.contracts.records import utc_iso
from streaming.gateway import metrics
from streaming.gateway.announcing import Announcer, BrokerUnavailable

LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_NOTICE_NAMESPACE = uuid.UUID("3c1f1d0a-7b8e-5f21-9a4c-2e6d5b0f8a13")


@dataclasses.dataclass
class _OpenSeries:
    study_instance_uid: str
    modality: str
    sender: str
    first_received: float
    last_received: float
    last_received_monotonic: float
    event_ids: set[str] = dataclasses.field(default_factory=set)


def notice_for(series_instance_uid: str, series: _OpenSeries, stable_after_s: float) -> dict:
    # The same set of instances always makes the same notice_id (a retried notice).
    members = hashlib.sha256("\n".join(sorted(series.event_ids)).encode()).hexdigest()
    return {
        "schema_version": SCHEMA_VERSION,
        "notice_id": str(uuid.uuid5(_NOTICE_NAMESPACE, f"{series_instance_uid}/{members}")),
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series_instance_uid,
        "modality": series.modality,
        "sender": series.sender,
        "instances": len(series.event_ids),
        "event_ids": sorted(series.event_ids),
        "first_received_at": utc_iso(series.first_received),
        "last_received_at": utc_iso(series.last_received),
        "stable_after_s": stable_after_s,
        "sent_at": utc_iso(time.time()),
    }


class SeriesTracker:
    def __init__(self, announcer: Announcer, topic: str, stable_after_s: float):
        self.announcer = announcer
        self.topic = topic
        self.stable_after_s = stable_after_s
        self._open: dict[str, _OpenSeries] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="series-complete", daemon=True)

    def instance_announced(self, event: ImageEvent) -> None:
        now, monotonic = time.time(), time.monotonic()
        with self._lock:
            series = self._open.setdefault(event.series_instance_uid, _OpenSeries(
                event.study_instance_uid, event.modality, event.sender, now, now, monotonic))
            series.last_received, series.last_received_monotonic = now, monotonic
            series.event_ids.add(event.event_id)

    def start(self) -> "SeriesTracker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        tick = min(1.0, self.stable_after_s / 4)
        while not self._stop.wait(tick):
            self.publish_stable()

    def publish_stable(self) -> int:
        """Send a notice for every series stable long enough; the rest wait. Returns sent."""
        deadline = time.monotonic() - self.stable_after_s
        with self._lock:
            stable = [(uid, s) for uid, s in self._open.items()
                      if s.last_received_monotonic <= deadline]
        sent = 0
        for series_uid, series in stable:
            notice = notice_for(series_uid, series, self.stable_after_s)
            problems = validation.violated_fields(validation.SERIES_COMPLETE, notice)
            if problems:
                LOG.error("series-complete notice breaks its schema; not sent",
                          extra={"problems": problems})
                self._forget(series_uid, series)
                continue
            try:
                self.announcer.send(self.topic, series.study_instance_uid, notice)
            except BrokerUnavailable as error:
                LOG.warning("series-complete notice not acknowledged; will retry",
                            extra={"notice_id": notice["notice_id"], "detail": str(error)})
                continue
            metrics.SERIES_COMPLETE.inc()
            LOG.info("series complete", extra={"notice_id": notice["notice_id"],
                                               "instances": notice["instances"],
                                               "topic": self.topic})
            self._forget(series_uid, series)
            sent += 1
        return sent

    def _forget(self, series_uid: str, series: _OpenSeries) -> None:
        with self._lock:
            # Unless an instance arrived meanwhile: then the series stays open.
            if self._open.get(series_uid) is series and (
                    series.last_received_monotonic <= time.monotonic() - self.stable_after_s):
                del self._open[series_uid]

"""The job's counters: Beam metrics (Dataflow's UI) and Prometheus (``--metrics_port``).

Every count goes through ``count`` so both views agree. Label values are codes
(status, reason, kind), never identifiers or anything read from an image.
"""

from __future__ import annotations

import logging
import threading

from apache_beam.metrics import Metrics
from prometheus_client import Counter, start_http_server

LOG = logging.getLogger(__name__)

# name -> (help, label name)
COUNTERS = {
    "events_consumed": ("Image events read from the events topic", None),
    "findings": ("Findings built, by status", "status"),
    "urgent_findings": ("Findings flagged urgent", None),
    "dead_letters": ("Dead letters built, by reason", "reason"),
    "published": ("Records acknowledged by the broker, by kind", "kind"),
    "publish_retries": ("Records re-sent after a retriable publishing error", None),
    "inference": ("Images scored, by outcome", "status"),
    "model": ("Model changes (swaps, refused versions)", "event"),
    "dedup": ("Duplicate suppression (skipped, unavailable, taken_over, settled, released)",
              "result"),
}

_PROMETHEUS: dict[str, Counter] = {}
_LOCK = threading.Lock()
_SERVER_PORT: int | None = None


def _prometheus(name: str) -> Counter:
    with _LOCK:
        if name not in _PROMETHEUS:
            text, label = COUNTERS[name]
            _PROMETHEUS[name] = Counter(f"medimg_{name}", text, [label] if label else [])
        return _PROMETHEUS[name]


def count(name: str, label: str | None = None, amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` (one of COUNTERS), split by ``label`` if it has one."""
    if amount <= 0:
        return
    Metrics.counter(f"medimg.{name}", label or "total").inc(amount)
    counter = _prometheus(name)
    (counter.labels(label) if COUNTERS[name][1] else counter).inc(amount)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (all interfaces a scraper may use; no data but counts)."""
    global _SERVER_PORT
    with _LOCK:
        if _SERVER_PORT is not None:
            return
        start_http_server(port)
        _SERVER_PORT = port
    LOG.info("metrics endpoint", extra={"port": port, "path": "/metrics"})

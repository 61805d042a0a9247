"""The job's counters and gauges: Beam metrics (Dataflow's UI) and Prometheus
(``--metrics_port``, bound to ``--metrics_host``, loopback unless an operator opens it).

Every count goes through ``count`` and every gauge through ``set_gauge`` so both views
agree. Label values are codes (status, reason, kind), never identifiers or anything
read from an image.
"""

from __future__ import annotations

import logging
import threading

from apache_beam.metrics import Metrics
from prometheus_client import Counter, Gauge, start_http_server

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
    "model": ("Model changes (swapped, refused versions, watch_error while polling)", "event"),
    "dedup": ("Duplicate suppression (skipped, unavailable, taken_over, settled, released)",
              "result"),
}

# name -> help (gauges carry no labels)
GAUGES = {
    "model_watchers_running": "Production-pointer watcher threads alive in this process "
                              "(0 while a model is unpinned means no more hot swaps)",
}
# name -> (help, label name): gauges split by a label
LABELLED_GAUGES = {
    "consumer_lag_records": ("Records of the events topic not yet read, by partition, as "
                             "the reader last saw the partition's end", "partition"),
}
DEFAULT_HOST = "127.0.0.1"

_PROMETHEUS: dict[str, Counter] = {}
_GAUGES: dict[str, Gauge] = {}
_LOCK = threading.Lock()
_SERVER_PORT: int | None = None


def _prometheus(name: str) -> Counter:
    with _LOCK:
        if name not in _PROMETHEUS:
            text, label = COUNTERS[name]
            _PROMETHEUS[name] = Counter(f"medimg_{name}", text, [label] if label else [])
        return _PROMETHEUS[name]


def count(name: str, label: str | None = None, amount: int = 1, *, beam: bool = True,
          prometheus: bool = True) -> None:
    """Add ``amount`` to counter ``name`` (one of COUNTERS), split by ``label`` if it has one.

    ``beam=False`` / ``prometheus=False`` leave one view out, for counts made outside a
    bundle (where Beam records nothing) and reported to Beam later from inside one.
    """
    if amount <= 0:
        return
    if beam:
        Metrics.counter(f"medimg.{name}", label or "total").inc(amount)
    if prometheus:
        counter = _prometheus(name)
        (counter.labels(label) if COUNTERS[name][1] else counter).inc(amount)


def set_gauge(name: str, value: float, label: str | None = None) -> None:
    """Set gauge ``name`` (one of GAUGES, or of LABELLED_GAUGES with ``label``) in both views."""
    if label is None:
        Metrics.gauge("medimg", name).set(int(value))
    else:
        Metrics.gauge(f"medimg.{name}", label).set(int(value))
    with _LOCK:
        if name not in _GAUGES:
            if name in LABELLED_GAUGES:
                text, label_name = LABELLED_GAUGES[name]
                _GAUGES[name] = Gauge(f"medimg_{name}", text, [label_name])
            else:
                _GAUGES[name] = Gauge(f"medimg_{name}", GAUGES[name])
        gauge = _GAUGES[name]
    (gauge.labels(label) if label is not None else gauge).set(value)


def serve(port: int, host: str = DEFAULT_HOST) -> None:
    """Expose /metrics on ``host:port`` (loopback by default; no data but counts)."""
    global _SERVER_PORT
    with _LOCK:
        if _SERVER_PORT is not None:
            return
        start_http_server(port, addr=host)
        _SERVER_PORT = port
    LOG.info("metrics endpoint", extra={"host": host, "port": port, "path": "/metrics"})

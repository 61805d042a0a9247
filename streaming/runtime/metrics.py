"""The job's metrics: Beam metrics (Dataflow's UI) and Prometheus (``--metrics_port``,
bound to ``--metrics_host``, loopback unless an operator opens it).

Every count goes through ``count``, every level through ``gauge`` and every
measurement through ``observe``, so both views agree and keep the same names
(``medimg_<name>`` in Prometheus, namespace ``medimg.<name>`` in Beam). Label values
are codes (status, reason, kind, partition number, model version), never identifiers
of events or anything read from an image. Beam distributions have no buckets and hold
integers: a ``_seconds`` histogram is a ``_ms`` distribution there.
"""

from __future__ import annotations

import logging
import threading

from apache_beam.metrics import Metrics
from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
    "dedup": ("Duplicate suppression (skipped, unavailable, taken_over, settled, released, "
              "settle_failed, conflict)", "result"),
    "decode_failures": ("Images the load stage could not read or decode, by reason", "reason"),
}

# Label values that exist from the start at 0, so a rate over them is 0, not absent.
INITIAL_LABELS = {
    "model": ("swapped", "refused", "watch_error"),
    "published": ("finding", "dead_letter"),
}

# name -> (help, label name)
GAUGES = {
    "consumer_lag_records": ("Records in the events topic not yet read, by partition",
                             "partition"),
    "broker_reachable": ("1 if the Kafka brokers answered the last request, else 0", None),
    "dedup_store_reachable": ("1 if the Redis dedup store answered the last request, else 0",
                              None),
    "model_watchers_running": ("Production-pointer watcher threads alive (0: no more hot "
                               "swaps)", None),
}

# name -> (help, label name, Prometheus buckets)
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HISTOGRAMS = {
    "end_to_end_latency_seconds": (
        "From the event's sent_at to the broker acknowledging its outcome, by kind", "kind",
        _SECONDS),
    "inference_batch_size": ("Images per inference batch", None,
                             (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
    "inference_batch_duration_seconds": ("Time to score one inference batch", None,
                                         (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                          10.0)),
}

DEFAULT_HOST = "127.0.0.1"

# The model version in service: a constant-1 series whose labels say which.
MODEL_INFO = "model_serving_info"

_PROMETHEUS: dict[str, Counter] = {}
_GAUGES: dict[str, Gauge] = {}
_HISTOGRAMS: dict[str, Histogram] = {}
_MODEL_INFO: list[Gauge] = []
_SERVING: dict[str, str] = {}  # model name -> version whose info series is on the page
_LOCK = threading.Lock()
_SERVER_PORT: int | None = None


def _prometheus(name: str) -> Counter:
    with _LOCK:
        if name not in _PROMETHEUS:
            text, label = COUNTERS[name]
            counter = Counter(f"medimg_{name}", text, [label] if label else [])
            for value in INITIAL_LABELS.get(name, ()):
                counter.labels(value)
            _PROMETHEUS[name] = counter
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


def gauge(name: str, value: float, label: str | None = None) -> None:
    """Set gauge ``name`` (one of GAUGES) to ``value``, for ``label`` if it has one."""
    Metrics.gauge(f"medimg.{name}", label or "value").set(int(value))
    with _LOCK:
        if name not in _GAUGES:
            text, label_name = GAUGES[name]
            _GAUGES[name] = Gauge(f"medimg_{name}", text, [label_name] if label_name else [])
        prometheus_gauge = _GAUGES[name]
    (prometheus_gauge.labels(label) if GAUGES[name][1] else prometheus_gauge).set(value)


def observe(name: str, value: float, label: str | None = None) -> None:
    """Record one measurement in histogram ``name`` (one of HISTOGRAMS)."""
    seconds = name.endswith("_seconds")
    beam_name = name[:-len("_seconds")] + "_ms" if seconds else name
    Metrics.distribution(f"medimg.{beam_name}", label or "value").update(
        int(round(value * 1000 if seconds else value)))
    with _LOCK:
        if name not in _HISTOGRAMS:
            text, label_name, buckets = HISTOGRAMS[name]
            _HISTOGRAMS[name] = Histogram(f"medimg_{name}", text,
                                          [label_name] if label_name else [], buckets=buckets)
        histogram = _HISTOGRAMS[name]
    (histogram.labels(label) if HISTOGRAMS[name][1] else histogram).observe(value)


def model_in_service(model_name: str, version: str) -> None:
    """Say which model version scores now (an info metric; Beam: a gauge of the version)."""
    if version.isdigit():
        Metrics.gauge(f"medimg.{MODEL_INFO}", model_name).set(int(version))
    with _LOCK:
        if not _MODEL_INFO:
            _MODEL_INFO.append(Gauge(f"medimg_{MODEL_INFO}",
                                     "1 for the model version in service", ["model", "version"]))
        info = _MODEL_INFO[0]
        # One version in service per model: the previous one's series goes away.
        previous = _SERVING.get(model_name)
        if previous is not None and previous != version:
            info.remove(model_name, previous)
        _SERVING[model_name] = version
        info.labels(model_name, version).set(1)


def serve(port: int, host: str = DEFAULT_HOST) -> None:
    """Expose /metrics on ``host:port`` (loopback by default; no data but counts)."""
    global _SERVER_PORT
    with _LOCK:
        if _SERVER_PORT is not None:
            return
        start_http_server(port, addr=host)
        _SERVER_PORT = port
    for name in COUNTERS:  # every counter is on the page from the start, at 0
        _prometheus(name)
    LOG.info("metrics endpoint", extra={"host": host, "port": port, "path": "/metrics"})

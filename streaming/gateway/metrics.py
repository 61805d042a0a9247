"""The gateway's Prometheus metrics, on the job's conventions (``medimg_`` names, counts only).

Labels are codes (protocol, reason), never identifiers or anything read from a
header: no patient identity can reach a scrape.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

LOG = logging.getLogger(__name__)

RECEIVED = Counter("medimg_gateway_instances_received",
                   "Instances received, by protocol (dimse, stow)", ["protocol"])
STORED = Counter("medimg_gateway_instances_stored",
                 "Instances durably written (a re-sent identical instance is not rewritten)")
ANNOUNCED = Counter("medimg_gateway_instances_announced",
                    "Image events acknowledged by the broker")
REFUSED = Counter("medimg_gateway_refused",
                  "Associations and instances refused, by reason", ["reason"])
SERIES_COMPLETE = Counter("medimg_gateway_series_complete_notices",
                          "Series-complete notices acknowledged by the broker")
ANNOUNCE_LATENCY = Histogram(
    "medimg_gateway_receive_to_ack_seconds",
    "From an instance fully received to its event acknowledged by the broker",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def refused(reason: str) -> None:
    REFUSED.labels(reason).inc()


def serve(port: int, host: str = "127.0.0.1") -> None:
    """/metrics on ``host:port``; loopback unless the operator names an interface."""
    start_http_server(port, addr=host)
    LOG.info("metrics endpoint", extra={"host": host, "port": port, "path": "/metrics"})

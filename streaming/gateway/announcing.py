"""Announcing on the broker, acknowledged (acks=all) within a bounded wait.

The wait is bounded so that a sender hears a failure status before its own DIMSE
timeout (often 30 s) and retries later, instead of its association timing out.
"""

from __future__ import annotations

import json
import logging
import threading

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streaming.kafka.config import KafkaConfig

LOG = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time; the sender should retry later."""


class Announcer:
    def __init__(self, config: KafkaConfig, timeout_s: float):
        self.config = config
        self.timeout_s = timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _client(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                timeout_ms = int(self.timeout_s * 1000)
                # A record not acknowledged within the wait expires instead of being
                # delivered later, after the sender was told to retry.
                self._producer = KafkaProducer(
                    **self.config.client_kwargs(), acks="all", linger_ms=0,
                    max_block_ms=timeout_ms, request_timeout_ms=max(timeout_ms // 2, 1000),
                    delivery_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
            return self._producer

    def connect(self) -> None:
        """Connect now, so the first instance does not wait for it; an outage is not an
        error here (instances are then refused until the broker answers)."""
        try:
            self._client()
        except KafkaError as error:
            LOG.warning("broker not reachable yet", extra={"detail": type(error).__name__})

    def send(self, topic: str, key: str, document: dict) -> None:
        """Publish one JSON document and wait for the broker's acknowledgement."""
        producer = None
        try:
            producer = self._client()
            future = producer.send(
                topic, value=json.dumps(document, separators=(",", ":")).encode("utf-8"),
                key=key.encode("utf-8"))
            future.get(timeout=self.timeout_s)
        except (KafkaError, TimeoutError) as error:
            self._discard(producer)
            raise BrokerUnavailable(f"the broker did not acknowledge within "
                                    f"{self.timeout_s:.0f} s ({type(error).__name__})") from None

    def _discard(self, producer: KafkaProducer | None) -> None:
        """A producer that timed out can stay wedged after the broker is back (its
        connection and idempotence state went stale): the next send starts afresh, and
        records it still held are dropped rather than delivered after the sender was told
        to retry."""
        with self._lock:
            if producer is None or self._producer is not producer:
                return
            self._producer = None
        try:
            producer.close(timeout=0)
        except KafkaError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self.timeout_s)
                self._producer = None

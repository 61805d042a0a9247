"""The gateway as one service: storage, announcer, SCP, optional STOW-RS endpoint and
series tracker, started together and stopped together (SIGTERM/SIGINT)."""

from __future__ import annotations

import logging
import signal
import threading

from streaming.gateway.announcing import Announcer
from streaming.gateway.config import GatewayConfig
from streaming.gateway.dimse import StoreScp
from streaming.gateway.intake import Intake
from streaming.gateway.series import SeriesTracker
from streaming.gateway.storage import InstanceStore
from streaming.kafka.config import KafkaConfig

LOG = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig, kafka: KafkaConfig):
        self.config = config
        self.announcer = Announcer(kafka, config.broker_timeout_s)
        self.series = (SeriesTracker(self.announcer, config.notices_topic,
                                     config.series_complete_s)
                       if config.series_complete_s > 0 else None)
        self.intake = Intake(InstanceStore(config.storage_root, config.max_file_bytes),
                             self.announcer, config.events_topic, priority=config.priority,
                             on_announced=self.series.instance_announced if self.series else None)
        self.scp = StoreScp(config, self.intake)
        self.stow = None
        self._stopped = threading.Event()

    def start(self) -> "Gateway":
        self.announcer.connect()
        if self.series:
            self.series.start()
        self.scp.start()
        if self.config.dicomweb_port is not None:
            from streaming.gateway.stow import StowServer  # noqa: PLC0415
            self.stow = StowServer(self.config, self.intake).start()
        return self

    def run_until_stopped(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop: associations in progress finish."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self._stopped.set())
        self._stopped.wait()
        LOG.info("stop signal: closing the gateway")
        self.stop()

    def stop(self) -> None:
        if self.stow:
            self.stow.stop()
        self.scp.stop()
        if self.series:
            self.series.stop()
        self.announcer.close()

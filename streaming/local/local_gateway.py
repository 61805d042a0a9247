"""Running ``medimg gateway`` on this machine as a child process (demo, tests).

Started exactly as an administrator would start it, in its own process group; ready
once its DICOM port (and DICOMweb port, when asked for) accepts connections.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from streaming.local.broker import LOOPBACK, free_port, port_is_open
from streaming.local.processes import LocalProcess

_MAIN = "import sys; from streaming.cli import main; sys.exit(main(sys.argv[1:]))"


class GatewayError(RuntimeError):
    """The gateway did not come up; the message names its log."""


class LocalGateway(LocalProcess):
    """One gateway process on loopback ports: start(), then stop() or kill()."""

    def __init__(self, *, bootstrap_servers: str, events_topic: str, storage_root: str | Path,
                 allowed_callers: str, log_path: str | Path, ae_title: str = "MEDIMG",
                 dicomweb: bool = False, extra: tuple[str, ...] = (),
                 env: dict | None = None):
        self.port = free_port()
        self.dicomweb_port = free_port() if dicomweb else None
        self.ae_title = ae_title
        self.storage_root = Path(storage_root)
        super().__init__(log_path, env)
        self.args = ["gateway", "--bootstrap_servers", bootstrap_servers,
                     "--events_topic", events_topic, "--storage_root", str(storage_root),
                     "--allowed_callers", allowed_callers, "--ae_title", ae_title,
                     "--host", LOOPBACK, "--port", str(self.port), *extra]
        if self.dicomweb_port:
            self.args += ["--dicomweb_port", str(self.dicomweb_port)]

    def start(self, timeout_s: float = 60.0) -> "LocalGateway":
        self._spawn([sys.executable, "-c", _MAIN, *self.args])
        deadline = time.monotonic() + timeout_s
        ports = [p for p in (self.port, self.dicomweb_port) if p]
        while not all(port_is_open(p) for p in ports):
            if self.process.poll() is not None:
                raise GatewayError(f"the gateway exited at start (code {self.process.returncode});"
                                   f" see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise GatewayError(f"the gateway did not listen within {timeout_s:.0f} s; "
                                   f"see {self.log_path}")
            time.sleep(0.05)
        return self

    def _stop_failed(self, message: str) -> Exception:
        return GatewayError(f"the gateway: {message}")

    def __enter__(self) -> "LocalGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill() if self.running() else None

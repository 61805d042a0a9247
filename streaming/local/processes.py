"""A service of ours as a child process on this machine (the job, the gateway).

Each runs in its own session, so a stop reaches the process group: ``stop`` is SIGTERM
(the service drains, then exits), ``kill`` is SIGKILL (as a crash would be).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


class LocalProcess:
    """Start with ``_spawn(argv)``; then ``stop()`` (drain) or ``kill()`` (crash)."""

    def __init__(self, log_path: str | os.PathLike, env: dict | None = None):
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def _spawn(self, argv: list[str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)

    def _stop_failed(self, message: str) -> Exception:
        """The error ``stop`` raises when the process would not stop in time."""
        return TimeoutError(message)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM: the service finishes what it holds, then exits; returns its status."""
        if not self.running():
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._stop_failed(f"it did not stop within {timeout_s:.0f} s; killed it "
                                    f"(see {self.log_path})") from None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is drained or committed."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

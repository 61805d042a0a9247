"""Running the streaming job on this machine as a child process (demo, tests, benchmarks).

The job runs as ``python -m streaming`` exactly as an operator would start it, in
its own process group, so stopping it never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def job_arguments(bootstrap_servers: str, *, events: str, findings: str, dead_letters: str,
                  consumer_group: str, model_registry: str | os.PathLike, model_name: str,
                  allowed_roots: str | os.PathLike, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``python -m streaming`` options every local run names, then ``extra``."""
    return ["--bootstrap_servers", bootstrap_servers, "--events_topic", events,
            "--findings_topic", findings, "--dead_letter_topic", dead_letters,
            "--consumer_group", consumer_group, "--model_registry", str(model_registry),
            "--model_name", model_name, "--allowed_roots", str(allowed_roots), *extra]


class LocalJob:
    """One streaming job process: start(), then stop() (drain) or kill() (crash)."""

    def __init__(self, args: list[str], log_path: str | os.PathLike, env: dict | None = None):
        self.args = list(args)
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalJob":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streaming", *self.args], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM: the job drains (finishes, publishes and commits what it read), then exits."""
        if not self.running():
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"the job did not drain within {timeout_s:.0f} s; killed it "
                               f"(see {self.log_path})") from None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is drained or committed."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the job process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "LocalJob":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.running():
            try:
                self.stop()
            except TimeoutError:
                pass


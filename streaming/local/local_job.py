"""Running the streaming job on this machine as a child process (demo, tests, benchmarks).

The job runs as ``python -m streaming`` exactly as an operator would start it, in
its own process group, so stopping it never leaves a process behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from streaming.local.processes import LocalProcess


def job_arguments(bootstrap_servers: str, *, events: str, findings: str, dead_letters: str,
                  consumer_group: str, model_registry: str | os.PathLike, model_name: str,
                  allowed_roots: str | os.PathLike, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``python -m streaming`` options every local run names, then ``extra``."""
    return ["--bootstrap_servers", bootstrap_servers, "--events_topic", events,
            "--findings_topic", findings, "--dead_letter_topic", dead_letters,
            "--consumer_group", consumer_group, "--model_registry", str(model_registry),
            "--model_name", model_name, "--allowed_roots", str(allowed_roots), *extra]


class LocalJob(LocalProcess):
    """One streaming job process: start(), then stop() (drain) or kill() (crash)."""

    def __init__(self, args: list[str], log_path: str | os.PathLike, env: dict | None = None):
        super().__init__(log_path, env)
        self.args = list(args)

    def start(self) -> "LocalJob":
        self._spawn([sys.executable, "-m", "streaming", *self.args])
        return self

    def _stop_failed(self, message: str) -> Exception:
        return TimeoutError(f"the job did not drain: {message}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the job process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def __enter__(self) -> "LocalJob":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.running():
            try:
                self.stop()
            except TimeoutError:
                pass


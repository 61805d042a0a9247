"""Graceful shutdown of a local streaming job.

SIGTERM (or Ctrl-C) asks the job to drain: the Kafka readers stop taking new
records, the records already read are finished, published and committed, and the
pipeline then completes. On Dataflow the runner's own drain does the same through
the readers' restriction truncation.
"""

from __future__ import annotations

import logging
import signal
import threading

LOG = logging.getLogger(__name__)
_DRAIN = threading.Event()


def drain_requested() -> bool:
    return _DRAIN.is_set()


def request_drain() -> None:
    """Drain as if SIGTERM had arrived (e.g. the job lost its consumer group's lease)."""
    _DRAIN.set()


def install_signal_handlers() -> None:
    """First SIGTERM/SIGINT drains; a second one stops at once (nothing committed is lost)."""
    def handle(signum, _frame):
        if _DRAIN.is_set():
            LOG.warning("second stop signal: exiting without draining",
                        extra={"signal": signal.Signals(signum).name})
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        LOG.info("stop signal: draining in-flight records, then exiting",
                 extra={"signal": signal.Signals(signum).name})
        _DRAIN.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

"""Dedup-claim scenarios against a real job and a real Redis (``make bench-reliability``).

- ``run_retry_scenario``: every few bundles the sink fails after claiming and the bundle
  is run again in the same process (scenarios/faults); each event must still get
  exactly one outcome.
- ``run_takeover_scenario``: the job SIGKILLs itself between the broker's acknowledgement
  and marking its claims done; a new worker takes the claims over (after reading back the
  topics) and must publish nothing twice.

Counts come from ``medimg reconcile``'s code reading the topics, never from the job.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from scenarios.delivery import JOB_START_S, Topics, stream_of
from streaming.contracts.events import ImageEvent
from streaming.kafka.config import KafkaConfig
from streaming.kafka.outcomes import OutcomeLog
from streaming.local.local_job import LocalJob
from streaming.tools.modality import publish_events
from streaming.tools.reconcile import reconcile

FAULTS = Path(__file__).resolve().parent / "faults"


def fault_environment(fault: str, log: Path) -> dict:
    """The environment that makes a job run with ``fault`` (see faults/sitecustomize.py)."""
    path = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "MEDIMG_FAULT": fault, "MEDIMG_FAULT_LOG": str(log)}


def _injected(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _warm_up(kafka: KafkaConfig, topics: Topics, log: OutcomeLog, images, job) -> list:
    """One event first, so the stream after it arrives bundle by bundle at a running job."""
    warm = stream_of(images, 1)
    publish_events(kafka, topics.events, warm)
    if not log.wait_for([e.event_id for e in warm], JOB_START_S):
        raise AssertionError(f"the job did not start; see {job.log_path}")
    return warm


def _counted(kafka: KafkaConfig, topics: Topics, log: OutcomeLog, events, job: LocalJob,
             **fields) -> dict:
    if not log.wait_for([e.event_id for e in events], JOB_START_S * 2):
        raise AssertionError(f"events still without an outcome; see {job.log_path}")
    log.drain(quiet_s=3)
    counted = reconcile(kafka, topics.events, topics.findings, topics.dead_letters)
    return {"events_sent": counted.event_records, "findings": counted.findings,
            "dead_letters": counted.dead_letters, "lost": len(counted.lost),
            "duplicated": len(counted.duplicated), **fields}


def run_retry_scenario(kafka: KafkaConfig, topics: Topics,
                       start_job: Callable[[dict], LocalJob], images: list[ImageEvent],
                       workdir: Path, *, events: int = 100, every: int = 3,
                       rate_per_s: float = 10.0) -> dict:
    stream = stream_of(images, events)
    faults = workdir / "retry-faults.log"
    job = start_job(fault_environment(f"retry_after_claim:{every}", faults))
    try:
        with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
            warm = _warm_up(kafka, topics, log, images, job)
            publish_events(kafka, topics.events, stream, rate_per_s=rate_per_s)
            report = _counted(kafka, topics, log, warm + stream, job,
                              bundles_failed_after_claiming=_injected(faults))
        report["job_survived"] = job.running()
    finally:
        job.stop()
    return report


def run_takeover_scenario(kafka: KafkaConfig, topics: Topics,
                          start_job: Callable[[dict | None], LocalJob],
                          images: list[ImageEvent], workdir: Path, *, events: int = 60,
                          rate_per_s: float = 10.0) -> dict:
    stream = stream_of(images, events)
    faults = workdir / "takeover-faults.log"
    job = start_job(fault_environment("kill_after_ack:3", faults))
    successor = None
    try:
        with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
            warm = _warm_up(kafka, topics, log, images, job)
            publisher = threading.Thread(target=publish_events, args=(
                kafka, topics.events, stream), kwargs={"rate_per_s": rate_per_s})
            publisher.start()
            died = job.process.wait(JOB_START_S)
            killed_at = time.time()
            successor = start_job(None)  # another worker finds the dead one's claims pending
            publisher.join()
            report = _counted(kafka, topics, log, warm + stream, successor,
                              killed_between_ack_and_done=_injected(faults),
                              exit_signal=-died,
                              successor_done_s=round(time.time() - killed_at, 1))
    finally:
        job.kill()
        if successor is not None:
            successor.stop()
    return report

"""Crash and outage scenarios: the job is killed or cut off while events flow.

Run small by integration_tests/test_delivery.py and in full by ``make
bench-reliability``. Counting is done by ``streaming.tools.reconcile`` from the topics.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Callable

from streaming.local.broker import EmbeddedBroker
from streaming.contracts.events import ImageEvent
from streaming.kafka.config import KafkaConfig
from streaming.local.local_job import LocalJob
from streaming.tools.modality import publish_events, restamp
from streaming.kafka.outcomes import OutcomeLog
from streaming.tools.reconcile import reconcile

JOB_START_S = 180.0


@dataclasses.dataclass
class Topics:
    events: str
    findings: str
    dead_letters: str


@dataclasses.dataclass
class DeliveryReport:
    scenario: str
    events_sent: int
    findings: int
    dead_letters: int
    lost: int
    duplicated: int
    restarts: int = 0
    recovery_s: list[float] = dataclasses.field(default_factory=list)
    outage_s: float = 0.0
    outage_cpu_s: float | None = None
    examples: dict = dataclasses.field(default_factory=dict)

    @property
    def max_recovery_s(self) -> float:
        return max(self.recovery_s, default=0.0)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "max_recovery_s": self.max_recovery_s}


def stream_of(events: list[ImageEvent], count: int) -> list[ImageEvent]:
    """``count`` new events announcing the given images again and again."""
    return [restamp(events[i % len(events)]) for i in range(count)]


def _emitted(outcome) -> float:
    stamp = outcome.document.get("emitted_at") or outcome.document.get("created_at")
    return dt.datetime.fromisoformat(stamp).timestamp()


def _first_outcome_after(log: OutcomeLog, moment: float, timeout_s: float) -> float:
    """Seconds from ``moment`` to the first outcome the job emitted after it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log.poll()
        later = [_emitted(o) for o in log.outcomes if _emitted(o) > moment]
        if later:
            return min(later) - moment
    raise TimeoutError(f"no outcome within {timeout_s:.0f} s")


def _finish(name: str, kafka: KafkaConfig, topics: Topics, log: OutcomeLog, events, job,
            report_fields: dict) -> DeliveryReport:
    if not log.wait_for([e.event_id for e in events], JOB_START_S * 2):
        raise AssertionError(f"{name}: events still without an outcome; see {job.log_path}")
    log.drain(quiet_s=3)
    counted = reconcile(kafka, topics.events, topics.findings, topics.dead_letters)
    return DeliveryReport(scenario=name, events_sent=counted.event_records,
                          findings=counted.findings, dead_letters=counted.dead_letters,
                          lost=len(counted.lost), duplicated=len(counted.duplicated),
                          examples={"lost": counted.lost[:10],
                                    "duplicated": list(counted.duplicated)[:10]},
                          **report_fields)


def run_crash_scenario(kafka: KafkaConfig, topics: Topics, start_job: Callable[[], LocalJob],
                       images: list[ImageEvent], *, events: int = 150, kills: int = 3,
                       rate_per_s: float = 15.0) -> DeliveryReport:
    """SIGKILL the job ``kills`` times while events flow, restarting it each time.

    Events come in ``kills + 1`` waves; each kill lands while its wave is still being
    published and scored, once a few of its outcomes are out.
    """
    warm = stream_of(images, 3)
    stream = stream_of(images, events)
    waves = [stream[i::kills + 1] for i in range(kills + 1)]
    started: list[LocalJob] = []

    def start() -> LocalJob:
        started.append(start_job())
        return started[-1]

    try:
        return _crash_waves(kafka, topics, start, warm, stream, waves, rate_per_s)
    except BaseException:
        for job in started:
            job.kill()  # never leave a job running behind a failed scenario
        raise


def _crash_waves(kafka, topics, start_job, warm, stream, waves, rate_per_s) -> DeliveryReport:
    kills = len(waves) - 1
    job = start_job()
    recoveries = []
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, warm)  # the first wave waits for a running job
        if not log.wait_for([e.event_id for e in warm], JOB_START_S):
            raise AssertionError(f"the job did not start; see {job.log_path}")
        for wave in waves[:-1]:
            publisher = _publish_in_background(kafka, topics.events, wave, rate_per_s)
            ids = [e.event_id for e in wave]
            if not _wait_for_some(log, ids, max(len(ids) // 4, 1), JOB_START_S):
                raise AssertionError(f"no progress before a kill; see {job.log_path}")
            job.kill()  # at any instant: between claim and acknowledgement too
            job = start_job()
            restarted = time.time()
            publisher.join()
            recoveries.append(_first_outcome_after(log, restarted, JOB_START_S))
        publish_events(kafka, topics.events, waves[-1], rate_per_s=rate_per_s)
        report = _finish("crash", kafka, topics, log, warm + stream, job,
                         {"restarts": kills, "recovery_s": recoveries})
    job.stop()
    return report


def _publish_in_background(kafka: KafkaConfig, topic: str, events, rate_per_s: float):
    publisher = threading.Thread(target=publish_events, args=(kafka, topic, events),
                                 kwargs={"rate_per_s": rate_per_s})
    publisher.start()
    return publisher


def _wait_for_some(log: OutcomeLog, event_ids: list[str], count: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log.poll()
        if len(log.settled(event_ids)) >= count:
            return True
    return False


def run_outage_scenario(kafka: KafkaConfig, broker: EmbeddedBroker, topics: Topics,
                        job: LocalJob, images: list[ImageEvent], *, outage_s: float = 30.0,
                        rate_per_s: float = 5.0) -> DeliveryReport:
    """Freeze the broker (SIGSTOP) for ``outage_s`` while events keep arriving."""
    stream = stream_of(images, int(rate_per_s * (outage_s + 20)))
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        warm = stream_of(images, 3)
        publish_events(kafka, topics.events, warm)
        if not log.wait_for([e.event_id for e in warm], JOB_START_S):
            raise AssertionError(f"the job did not start; see {job.log_path}")
        publisher = _publish_in_background(kafka, topics.events, stream, rate_per_s)
        time.sleep(5)
        broker.pause()
        cpu_before = job.cpu_seconds()
        time.sleep(outage_s)
        outage_cpu = job.cpu_seconds() - cpu_before
        broker.resume()
        resumed = time.time()
        recovery = _first_outcome_after(log, resumed, JOB_START_S)
        publisher.join()
        report = _finish("outage", kafka, topics, log, warm + stream, job,
                         {"recovery_s": [recovery], "outage_s": outage_s,
                          "outage_cpu_s": outage_cpu})
    return report


def rewind_group(kafka: KafkaConfig, group: str, topic: str) -> None:
    """Move a consumer group back to the beginning of ``topic``: every event is replayed."""
    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415
    from kafka.structs import OffsetAndMetadata  # noqa: PLC0415

    from streaming.kafka.admin import partitions_of  # noqa: PLC0415
    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in partitions_of(kafka, topic)]
        consumer.assign(partitions)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in partitions})
    finally:
        consumer.close(autocommit=False)


def run_replay_scenario(kafka: KafkaConfig, topics: Topics, group: str,
                        start_job: Callable[[], LocalJob], settle_s: float = 20.0) -> dict:
    """Rewind the job's consumer group to the beginning and run it again over everything.

    With deduplication nothing new may be published: every replayed event already has
    its outcome. Returns the outcome counts before and after.
    """
    before = reconcile(kafka, topics.events, topics.findings, topics.dead_letters)
    rewind_group(kafka, group, topics.events)
    job = start_job()
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        log.drain(quiet_s=1)
        seen = len(log.outcomes)
        # The job has read everything again once the group's commits reach the end.
        _wait_for_group_at_end(kafka, group, topics.events, JOB_START_S)
        time.sleep(settle_s / 4)
        log.drain(quiet_s=2)
        republished = len(log.outcomes) - seen
    job.stop()
    after = reconcile(kafka, topics.events, topics.findings, topics.dead_letters)
    return {"events_replayed": before.event_records, "outcomes_before": before.findings
            + before.dead_letters, "outcomes_after": after.findings + after.dead_letters,
            "republished": republished, "duplicated": len(after.duplicated)}


def _wait_for_group_at_end(kafka: KafkaConfig, group: str, topic: str, timeout_s: float) -> None:
    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    from streaming.kafka.admin import partitions_of  # noqa: PLC0415
    from streaming.kafka.reading import read_topic  # noqa: PLC0415
    last = {}
    for record in read_topic(kafka, topic):
        last[(record.topic, record.partition)] = record.offset + 1
    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in partitions_of(kafka, topic)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = {tp: consumer.committed(tp) or 0 for tp in partitions}
            if all(committed[tp] >= last.get((tp.topic, tp.partition), 0) for tp in partitions):
                return
            time.sleep(1)
        raise AssertionError(f"the job did not read {topic} to its end again")
    finally:
        consumer.close(autocommit=False)


def _one_keeps_running(jobs: list[LocalJob], timeout_s: float) -> tuple[LocalJob, int]:
    """Of jobs started together on one group, the one that runs, and how many refused."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [job for job in jobs if job.running()]
        if len(running) == 1 and len(jobs) > 1:
            refused = [job for job in jobs if job is not running[0]]
            if any(job.process.returncode != 2 for job in refused):
                raise AssertionError(f"a job exited but was not refused; see "
                                     f"{[str(job.log_path) for job in refused]}")
            return running[0], len(refused)
        if not running:
            raise AssertionError(f"no job kept running; see {[str(j.log_path) for j in jobs]}")
        time.sleep(0.5)
    raise AssertionError(f"{len(jobs)} jobs still running on one consumer group")


def run_multi_process_scenario(kafka: KafkaConfig, topics: Topics,
                               start_job: Callable[[], LocalJob], images: list[ImageEvent], *,
                               events: int = 400, kills: int = 2,
                               rate_per_s: float = 8.0) -> dict:
    """Two jobs started on one consumer group while events flow, as an operator might by
    mistake; then the running one SIGKILLed ``kills`` times, each time restarted as two
    copies again. One job may run; every other start must be refused."""
    warm = stream_of(images, 3)
    stream = stream_of(images, events)
    waves = [stream[i::kills + 1] for i in range(kills + 1)]
    refused = 0
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publisher = _publish_in_background(kafka, topics.events, warm + waves[0], rate_per_s)
        active, losers = _one_keeps_running([start_job(), start_job()], JOB_START_S)
        refused += losers
        for previous, wave in zip(waves, waves[1:]):
            ids = [e.event_id for e in previous]
            if not _wait_for_some(log, ids, max(len(ids) // 4, 1), JOB_START_S):
                raise AssertionError(f"no progress before a kill; see {active.log_path}")
            active.kill()
            publisher.join()
            publisher = _publish_in_background(kafka, topics.events, wave, rate_per_s)
            active, losers = _one_keeps_running([start_job(), start_job()], JOB_START_S)
            refused += losers
        publisher.join()
        report = _finish("multi_process", kafka, topics, log, warm + stream, active,
                         {"restarts": kills})
    active.stop()
    return {**report.to_dict(), "refused_starts": refused}

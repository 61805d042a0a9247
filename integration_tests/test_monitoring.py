"""A real Prometheus scraping a real job while events flow, with deploy/monitoring/'s rules.

The job is frozen with SIGSTOP: "events arriving, no outcomes" must fire, then
resolve after SIGCONT. Every dashboard panel's query must return data from the same
Prometheus. Rule time scales are shrunk (scenarios/prometheus_server.py); the
expressions are the deployed ones.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time

import pytest

from integration_tests.conftest import STUDY_IMAGE_SIZE, JobTopics
from scenarios.delivery import JOB_START_S
from scenarios.prometheus_server import (MONITORING, PrometheusServer, config_for_test,
                                        prometheus_binary)
from streaming.kafka.admin import ensure_topics
from streaming.local import phantoms
from streaming.local.broker import LOOPBACK, free_port
from streaming.local.demo import DEMO_MODEL
from streaming.local.local_job import LocalJob, job_arguments
from streaming.tools.modality import event_for_file, publish_events, publish_raw, restamp
from streaming.tools.topic_metrics import TopicOffsets, serve_topic_offsets

pytestmark = pytest.mark.slow

NO_OUTCOMES = "MedimgEventsWithoutOutcomes"


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(interval_s)


class Traffic:
    """A modality sending events at a steady rate until stopped."""

    def __init__(self, kafka, topic: str, events, rate_per_s: float):
        self._stop = threading.Event()
        stream = (restamp(event) for event in itertools.cycle(events))
        self._thread = threading.Thread(target=publish_events, daemon=True, args=(
            kafka, topic, itertools.takewhile(lambda _: not self._stop.is_set(), stream),
            rate_per_s))

    def start(self) -> "Traffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def monitored(broker, kafka, phantom_registry, redis_server, tmp_path_factory):
    """Job (with Redis dedup), topic-offsets exporter and Prometheus, with events flowing."""
    if prometheus_binary() is None:
        message = "prometheus not found: install the Debian package `prometheus`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("monitoring")
    topics = JobTopics()
    ensure_topics(kafka, {name: 3 for name in (topics.events, topics.findings,
                                                topics.dead_letters)})
    job_port = free_port()
    job = LocalJob(job_arguments(
        broker.bootstrap_servers, events=topics.events, findings=topics.findings,
        dead_letters=topics.dead_letters, consumer_group=topics.group,
        model_registry=phantom_registry, model_name=DEMO_MODEL, allowed_roots=str(workdir),
        extra=("--metrics_port", str(job_port), "--redis_url", redis_server.url)),
        log_path=workdir / "job.log").start()
    offsets = TopicOffsets(kafka, [topics.events, topics.findings, topics.dead_letters],
                           topics.group)
    offsets_port = free_port()
    offsets_server = serve_topic_offsets(offsets, offsets_port, LOOPBACK)
    config = config_for_test(workdir, f"{LOOPBACK}:{job_port}", f"{LOOPBACK}:{offsets_port}",
                             topics.events, [topics.findings, topics.dead_letters])
    prometheus = PrometheusServer(workdir, config).start()

    cases = phantoms.generate_study_set(workdir / "studies", 4, seed=17, size=STUDY_IMAGE_SIZE)
    images = [event_for_file(c.path, sender="MONITORING_TEST") for c in cases]
    (workdir / "garbage.png").write_bytes(b"not a png at all")
    garbage = event_for_file(workdir / "garbage.png", sender="MONITORING_TEST")
    # What the dashboard's panels need besides findings: a dead letter at parse, a
    # decode failure, and one event sent twice (a duplicate for dedup to skip).
    publish_raw(kafka, topics.events, [b"{not json"])
    publish_events(kafka, topics.events, [garbage, images[0], images[0]])
    traffic = Traffic(kafka, topics.events, images, rate_per_s=4).start()
    try:
        wait_for(lambda: prometheus.query(
            'sum(increase(kafka_topic_partition_current_offset{stream="outcomes"}[10s])) > 0'),
            JOB_START_S, "outcomes flowing (see the job's log)")
        yield job, prometheus
    finally:
        traffic.stop()
        job.kill()
        prometheus.stop()
        offsets_server.shutdown()
        offsets.close()


def test_every_dashboard_panel_has_data_from_the_running_job(monitored):
    _job, prometheus = monitored
    panels = [panel for panel in json.loads((MONITORING / "dashboard.json").read_text())["panels"]
              if panel["type"] != "row"]
    # Grafana's own macro, given the value Grafana would pick for a 1 s scrape interval.
    queries = [(panel["title"], target["expr"].replace("$__rate_interval", "10s"))
               for panel in panels for target in panel["targets"]]
    assert len(queries) >= 15
    for title, expr in queries:
        wait_for(lambda: prometheus.query(expr), 60, f"data for {title!r}: {expr}")
    versions = prometheus.query("medimg_model_serving_info")
    assert [sample["metric"]["version"] for sample in versions] == ["1"]
    dedup = {s["metric"]["result"] for s in prometheus.query("medimg_dedup_total")}
    assert "skipped" in dedup, "the event sent twice was published once"
    decode = {s["metric"]["reason"] for s in prometheus.query("medimg_decode_failures_total")}
    assert decode == {"not_an_image"}


def test_a_frozen_job_pages_no_outcomes_while_events_arrive_and_resolves_after(monitored):
    job, prometheus = monitored
    assert prometheus.query('up{job="medimg-stream"} == 1'), "the job is scraped"
    assert prometheus.alerts().get(NO_OUTCOMES) != "firing", "outcomes flow: nothing to page"

    os.killpg(job.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: prometheus.alerts().get(NO_OUTCOMES) == "firing", 90,
                 f"{NO_OUTCOMES} firing while the job is frozen")
        # The frozen job's own endpoint cannot answer: that is MedimgJobDown's part.
        assert prometheus.alerts().get("MedimgJobDown") == "firing"
        assert prometheus.query('sum(increase(kafka_topic_partition_current_offset'
                                '{stream="events"}[10s])) > 0'), "events kept arriving"
    finally:
        os.killpg(job.pid, signal.SIGCONT)

    wait_for(lambda: NO_OUTCOMES not in prometheus.alerts(), 90,
             f"{NO_OUTCOMES} resolved once the job runs again")
    assert job.running()

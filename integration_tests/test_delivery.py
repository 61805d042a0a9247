"""Effectively-once under faults: SIGKILLs mid-stream and a frozen broker, with Redis dedup.

Scaled down for `make test`; `make bench-reliability` runs the same scenarios in full
(three kills over more events, a 30 s outage). Counts come from `medimg reconcile`'s
code reading the topics, not from the job.
"""

from __future__ import annotations

import pytest

from integration_tests.conftest import STUDY_IMAGE_SIZE
from scenarios.delivery import (Topics, run_crash_scenario,
                                                  run_outage_scenario, run_replay_scenario)
from streaming.local import phantoms
from streaming.kafka.admin import ensure_topics
from streaming.tools.modality import event_for_file


@pytest.fixture
def images(tmp_path):
    cases = phantoms.generate_study_set(tmp_path / "studies", 6, seed=13, size=STUDY_IMAGE_SIZE)
    return [event_for_file(c.path, sender="FAULT_TEST") for c in cases]


@pytest.fixture
def scenario_topics(kafka, topics) -> Topics:
    ensure_topics(kafka, {name: 3 for name in (topics.events, topics.findings,
                                                topics.dead_letters)})
    return Topics(topics.events, topics.findings, topics.dead_letters)


@pytest.mark.slow
def test_three_sigkills_lose_nothing_and_repeat_nothing(kafka, scenario_topics, topics,
                                                        start_job, redis_server, images):
    def job():
        return start_job("--redis_url", redis_server.url)

    report = run_crash_scenario(kafka, scenario_topics, job, images, events=120, kills=3,
                                rate_per_s=8)
    assert report.restarts == 3
    assert report.events_sent == 123  # 3 to see the job up, then 120 in four waves
    assert report.findings + report.dead_letters == 123
    assert (report.lost, report.duplicated) == (0, 0)

    # Every event seen again (the group rewound to the start): nothing is published twice.
    replay = run_replay_scenario(kafka, scenario_topics, topics.group, job)
    assert replay["events_replayed"] == 123
    assert (replay["republished"], replay["duplicated"]) == (0, 0)
    assert replay["outcomes_after"] == replay["outcomes_before"] == 123


@pytest.mark.slow
def test_a_broker_outage_is_survived_without_loss(kafka, broker, scenario_topics, start_job,
                                                   redis_server, images):
    job = start_job("--redis_url", redis_server.url)
    report = run_outage_scenario(kafka, broker, scenario_topics, job, images, outage_s=8,
                                 rate_per_s=5)
    assert job.running(), "the job must survive the outage"
    assert (report.lost, report.duplicated) == (0, 0)
    assert report.findings + report.dead_letters == report.events_sent
    assert job.stop() == 0


def test_a_reused_event_id_is_dead_lettered_and_reconcile_reports_it(
        kafka, scenario_topics, start_job, redis_server, images):
    """The same event_id for two different images: the first is scored, the second is an
    event_id_conflict dead letter (once, even when re-sent), and reconcile says so."""
    import dataclasses  # noqa: PLC0415

    from streaming.kafka.outcomes import OutcomeLog  # noqa: PLC0415
    from streaming.tools.modality import publish_events  # noqa: PLC0415
    from streaming.tools.reconcile import reconcile  # noqa: PLC0415

    original, other_image = images[0], images[1]
    reused = dataclasses.replace(other_image, event_id=original.event_id)
    job = start_job("--redis_url", redis_server.url)
    with OutcomeLog(kafka, scenario_topics.findings, scenario_topics.dead_letters) as log:
        publish_events(kafka, scenario_topics.events, [original])
        assert log.wait_for([original.event_id], 180), job.log_tail()
        publish_events(kafka, scenario_topics.events, [reused, original])  # + an honest re-send
        assert log.wait_for_count(2, 60), job.log_tail()
        log.drain(quiet_s=3)
    assert job.stop() == 0
    outcomes = log.by_event[original.event_id]
    assert sorted(o.kind for o in outcomes) == ["dead_letter", "finding"]
    (letter,) = [o.document for o in outcomes if o.kind == "dead_letter"]
    assert letter["reason"] == "event_id_conflict"
    result = reconcile(kafka, scenario_topics.events, scenario_topics.findings,
                       scenario_topics.dead_letters)
    assert result.conflicts == {original.event_id: 2}
    assert result.ok and result.lost == [] and result.duplicated == {}

"""Hostile input against the real job: every bad input is dead-lettered with its reason.

A scaled-down run of the campaign in integration_tests/scenarios/hostile.py (the
full one runs in ``make bench-reliability``): a few inputs of every hostile class,
good events between them, one job.
"""

from __future__ import annotations

import pytest

from scenarios.hostile import HOSTILE_CLASSES, run_hostile_campaign

BAD_INPUTS = 4 * len(HOSTILE_CLASSES)
GOOD_EVENTS = 30


@pytest.mark.slow
def test_bad_inputs_get_their_reason_good_events_their_finding_and_the_job_keeps_running(
        kafka, topics, start_job, redis_server, tmp_path):
    # start_job allows tmp_path only: the workshop root; its "-outside" sibling is not.
    # With Redis, as in production: an input that reused another's event_id would get
    # no outcome of its own, so this also checks that the campaign's inputs are distinct.
    job = start_job("--redis_url", redis_server.url)
    report = run_hostile_campaign(kafka, topics, job, tmp_path, BAD_INPUTS, seed=1126,
                                  good=GOOD_EVENTS)

    assert report.job_running, f"bad input stopped the job:\n{job.log_tail()}"
    assert len(report.classes) >= 12 and report.bad_sent == BAD_INPUTS
    assert report.mismatches == [], "inputs dead-lettered with the wrong reason (or not at all)"
    assert all(c["matched"] == c["sent"] > 0 for c in report.classes.values()), report.classes
    assert report.good_without_finding == [], "good events without their finding"
    assert report.duplicated == 0 and report.unexpected_outcomes == 0
    assert report.invalid_records == [], "published records that break their schema"
    assert report.sha256_mismatches == 0, "dead letters that do not carry their payload"
    assert job.stop() == 0, job.log_tail()

"""No patient identity leaves the job: canary values in real DICOM files, searched for everywhere.

Copies of real scanner files carry distinctive fake names, IDs, birth date,
accession number, institution and referring physician (integration_tests/scenarios/
phi.py), some decodable, some cut, garbled or not images at all, some with the
canary in an element the decoder parses. The job runs them with debug logging and
its Prometheus endpoint on; findings, dead letters, the job's log, the metrics
page and the events themselves must hold none of the canaries.
"""

from __future__ import annotations

import functools

import pytest

from scenarios import phi
from streaming.local.broker import free_port
from streaming.local.reference_data import ScannerFilesMissing


def test_canary_copies_carry_the_canaries_they_are_searched_for(tmp_path):
    try:
        files = phi.write_canary_files(tmp_path)
    except ScannerFilesMissing as missing:
        pytest.skip(str(missing))
    carried = {f.path.name: phi.canaries_in_file(f.path) for f in files}
    # Every copy names the patient; one is cut inside Patient ID, just after the name.
    assert all("PatientName" in found for found in carried.values()), carried
    assert set().union(*carried.values()) == set(phi.CANARIES) | set(phi.HEADER_CANARIES)
    assert {f.decodable for f in files} == {True, False}


@pytest.mark.slow
def test_no_canary_reaches_findings_dead_letters_logs_metrics_or_events(
        kafka, topics, start_job, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_LOG_LEVEL", "DEBUG")  # every log line the job can write
    port = free_port()
    job = start_job("--metrics_port", str(port))
    try:
        report = phi.run_phi_check(kafka, topics, job, tmp_path / "canary",
                                   functools.partial(phi.metrics_page, port))
    except ScannerFilesMissing as missing:
        pytest.skip(str(missing))

    assert report.without_outcome == [] and report.job_exit == 0, job.log_tail()
    assert report.wrong_path == [], "canary files that did not take the path built for them"
    assert report.findings and report.dead_letters and report.metrics_scraped
    assert report.event_leaks == [], "header values a modality copied into its events"
    assert report.total_hits == 0, {k: v for k, v in report.hits.items() if any(v.values())}

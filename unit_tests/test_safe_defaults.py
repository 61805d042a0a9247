"""Production defaults that fail safe: nothing readable, nothing exposed, nothing forgotten."""

from __future__ import annotations

import psutil
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.delivery.dedup import DEFAULT_TTL_S
from streaming.job.options import OptionsError, job_settings
from streaming.local.broker import free_port
from streaming.runtime import metrics

KAFKA_DEFAULT_RETENTION_S = 7 * 24 * 3600


def settings(*argv, tmp_path):
    return job_settings(PipelineOptions(["--model_registry", str(tmp_path), *argv]))


def test_no_folder_is_readable_unless_named(tmp_path):
    with pytest.raises(OptionsError, match="--allowed_roots is required"):
        settings(tmp_path=tmp_path)
    named = settings("--allowed_roots", f"{tmp_path},gs://bucket/studies/", tmp_path=tmp_path)
    assert named.access.allowed_roots == (str(tmp_path), "gs://bucket/studies/")
    assert not named.access.refuse_hard_links
    assert settings("--allowed_roots", str(tmp_path), "--refuse_hard_links",
                    tmp_path=tmp_path).access.refuse_hard_links


def test_events_are_remembered_longer_than_kafka_keeps_them(tmp_path):
    assert DEFAULT_TTL_S > KAFKA_DEFAULT_RETENTION_S
    dedup = settings("--allowed_roots", str(tmp_path), "--redis_url", "redis://localhost:6379",
                     tmp_path=tmp_path).dedup
    assert dedup.ttl_s == DEFAULT_TTL_S


def test_the_metrics_endpoint_listens_on_loopback_unless_told(tmp_path):
    assert settings("--allowed_roots", str(tmp_path), tmp_path=tmp_path).metrics_host == \
        "127.0.0.1"
    assert settings("--allowed_roots", str(tmp_path), "--metrics_host", "0.0.0.0",
                    tmp_path=tmp_path).metrics_host == "0.0.0.0"
    port = free_port()
    metrics.serve(port)
    listening = {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}

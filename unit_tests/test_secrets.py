"""Secrets: the environment, then a file, then Secret Manager (Dataflow workers), in
that order; a reference is a name checked at launch, never a value."""

from __future__ import annotations

import pickle

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.delivery.dedup import RedisSettings
from streaming.job.options import OptionsError, job_settings
from streaming.runtime.secrets import SecretUnreadable, parse_secret_manager_refs, read_secret

VERSION = "projects/hospital-ml/secrets/kafka-password/versions/latest"
REFS = {"MEDIMG_KAFKA_SASL_PASSWORD": VERSION}


def fetch(name):
    assert name == VERSION
    return "from-secret-manager"


def test_the_environment_and_files_win_over_secret_manager(tmp_path):
    secret_file = tmp_path / "password"
    secret_file.write_text("from-file\n")
    variable = "MEDIMG_KAFKA_SASL_PASSWORD"
    assert read_secret(variable, {variable: "from-env"}, REFS, fetch) == "from-env"
    assert read_secret(variable, {f"{variable}_FILE": str(secret_file)}, REFS,
                       fetch) == "from-file"
    assert read_secret(variable, {}, REFS, fetch) == "from-secret-manager"
    assert read_secret(variable, {}, {}, fetch) is None


def test_an_unreadable_secret_names_the_version_and_the_role_not_the_error_text():
    def denied(name):
        raise PermissionError("403 caller lacks secretmanager.versions.access on s3cret-ish")
    with pytest.raises(SecretUnreadable, match="roles/secretmanager.secretAccessor") as caught:
        read_secret("MEDIMG_KAFKA_SASL_PASSWORD", {}, REFS, denied)
    assert VERSION in str(caught.value) and "s3cret" not in str(caught.value)


def test_references_are_checked_at_launch():
    assert parse_secret_manager_refs(f"MEDIMG_KAFKA_SASL_PASSWORD={VERSION}") == (
        ("MEDIMG_KAFKA_SASL_PASSWORD", VERSION),)
    with pytest.raises(ValueError, match="is not one of"):
        parse_secret_manager_refs(f"MEDIMG_KAFKA_PASSWORD={VERSION}")
    with pytest.raises(ValueError, match="must name a version"):
        parse_secret_manager_refs("MEDIMG_REDIS_PASSWORD=projects/p/secrets/s")
    options = PipelineOptions(["--model_registry", "r", "--allowed_roots", "/a",
                               "--secret_manager_secrets", "MEDIMG_REDIS_PASSWORD=hunter2"])
    with pytest.raises(OptionsError, match="must name a version"):
        job_settings(options)


def test_the_settings_pickled_for_workers_carry_names_and_redis_reads_them():
    options = PipelineOptions(["--model_registry", "r", "--allowed_roots", "/a",
                               "--redis_url", "redis://redis:6379/0",
                               "--secret_manager_secrets",
                               f"MEDIMG_REDIS_PASSWORD={VERSION}"])
    settings = job_settings(options)
    shipped = pickle.loads(pickle.dumps(settings))
    assert dict(shipped.kafka.secret_manager) == {"MEDIMG_REDIS_PASSWORD": VERSION}
    redis_settings: RedisSettings = shipped.dedup
    assert dict(redis_settings.secret_manager) == {"MEDIMG_REDIS_PASSWORD": VERSION}


def test_redis_credentials_come_from_secret_manager_on_a_worker(monkeypatch):
    monkeypatch.setattr("streaming.runtime.secrets.access_secret_version", fetch)
    settings = RedisSettings(url="redis://redis:6379/0", namespace="g",
                             secret_manager=(("MEDIMG_REDIS_PASSWORD", VERSION),))
    client = settings.client(environ={})  # builds a pool; connects on first command
    assert client.connection_pool.connection_kwargs["password"] == "from-secret-manager"

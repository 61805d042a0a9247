"""deploy/compose/ validated by docker-compose itself (`docker-compose config`), and its
Prometheus configuration by promtool.

docker-compose comes with the Debian package `docker-compose` (.ci/run installs it).
Without it these tests are skipped on a workstation and fail under CI=true.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from unit_tests.test_monitoring import promtool

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"
SERVICES = {"kafka", "redis", "stream", "topic-metrics", "prometheus", "airflow"}


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    message = ("docker-compose not found: install the Debian package `docker-compose` "
               "(apt-get install docker-compose)")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def compose_config(folder: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([docker_compose(), "-f", str(folder / "docker-compose.yml"),
                           "config"], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": "medimg"})


@pytest.fixture(scope="module")
def config():
    result = compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target -> (source, mode), from docker-compose 1.29's short volume syntax."""
    found = {}
    for volume in service["volumes"]:
        source, target, mode = volume.rsplit(":", 2)
        found[target] = (source, mode)
    return found


def test_the_stack_is_valid_and_complete(config):
    assert set(config["services"]) == SERVICES


def test_a_broken_compose_file_is_refused(tmp_path):
    """The check above can fail: an unknown service key is an error."""
    text = (COMPOSE / "docker-compose.yml").read_text()
    (tmp_path / "docker-compose.yml").write_text(
        text.replace("  stream:\n", "  stream:\n    replicaz: 2\n", 1))
    result = compose_config(tmp_path)
    assert result.returncode != 0
    assert "replicaz" in result.stderr


def test_secrets_are_files_never_environment_values(config):
    for name, service in config["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|USERNAME|TOKEN|SECRET", variable):
                assert variable.endswith("_FILE"), (name, variable)
                assert value.startswith("/run/secrets/"), (name, variable)
    for secret in config["secrets"].values():
        assert secret["file"].startswith(str(COMPOSE / "secrets"))
    stream = config["services"]["stream"]
    assert {s["source"] for s in stream["secrets"]} == {"redis-username", "redis-password"}
    assert "/run/secrets/redis-users.acl" in config["services"]["redis"]["command"]


def test_the_job_runs_once_drains_and_is_scraped(config):
    stream = config["services"]["stream"]
    assert stream.get("deploy", {}).get("replicas", 1) == 1
    assert stream["stop_grace_period"] == "2m"
    assert "--metrics_host=0.0.0.0" in stream["command"]
    assert stream["read_only"] is True and stream["cap_drop"] == ["ALL"]
    assert stream["depends_on"]["kafka"]["condition"] == "service_healthy"
    job = mounts(stream)
    assert job["/models"] == ("models", "ro") and job["/studies"][1] == "ro"
    # The nightly training writes the registry the job reads.
    assert mounts(config["services"]["airflow"])["/models"] == ("models", "rw")


def test_prometheus_config_passes_promtool_with_the_real_rules(tmp_path, config):
    prometheus = config["services"]["prometheus"]
    targets = {target: source for target, (source, _) in mounts(prometheus).items()}
    assert targets["/etc/prometheus/rules"] == str(ROOT / "deploy" / "monitoring" / "rules")
    shutil.copy(COMPOSE / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(targets["/etc/prometheus/rules"], tmp_path / "rules")
    result = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    scraped = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"]
    assert {c["job_name"]: c["static_configs"][0]["targets"] for c in scraped} == {
        "medimg-stream": ["stream:9464"], "kafka-topics": ["topic-metrics:9309"]}


def test_make_secrets_writes_an_acl_with_the_default_user_off(tmp_path):
    folder = tmp_path / "compose"
    (folder / "secrets").mkdir(parents=True)
    shutil.copy(COMPOSE / "make-secrets.sh", folder)
    subprocess.run(["bash", str(folder / "make-secrets.sh")], check=True, capture_output=True)
    secrets = folder / "secrets"
    password = (secrets / "redis-password").read_text()
    assert len(password) >= 30
    acl = (secrets / "redis-users.acl").read_text().splitlines()
    assert acl == ["user default off", f"user medimg on >{password} ~* &* +@all"]
    subprocess.run(["bash", str(folder / "make-secrets.sh")], check=True, capture_output=True)
    assert (secrets / "redis-password").read_text() == password  # never rotated by a re-run

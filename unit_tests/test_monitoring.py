"""deploy/monitoring/ checked by Prometheus' own tool (promtool) and against the job's metrics.

promtool comes with the Debian package `prometheus` (.ci/run installs it). Without it
these tests are skipped on a workstation and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streaming.runtime import metrics

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULE_FILES = [MONITORING / "rules" / "recording.yml", MONITORING / "rules" / "alerts.yml"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool not found: install the Debian package `prometheus` (apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], cwd=MONITORING, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rules(kind: str) -> list[dict]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule for rule in group["rules"] if kind in rule]
    return found


def test_scrape_config_and_rules_pass_promtool_checks():
    assert "SUCCESS" in run_promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in run_promtool("check", "rules", *map(str, RULE_FILES))


def test_alert_unit_tests_pass_promtool():
    assert "SUCCESS" in run_promtool("test", "rules", "tests/alerts_test.yml")


def test_every_alert_has_a_unit_test_firing_and_one_not_firing():
    cases = [case for test in yaml.safe_load(
        (MONITORING / "tests" / "alerts_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])]
    for alert in rules("alert"):
        name = alert["alert"]
        assert any(c["alertname"] == name and c.get("exp_alerts") for c in cases), name
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in cases), name


def test_alerts_follow_the_conventions():
    for alert in rules("alert"):
        assert alert.get("for"), alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"])
    for record in rules("record"):
        assert re.fullmatch(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", record["record"]), record["record"]


def exported_metric_names() -> set[str]:
    exported = {f"medimg_{name}_total" for name in metrics.COUNTERS}
    exported |= {f"medimg_{name}" for name in metrics.GAUGES}
    exported |= {f"medimg_{name}_bucket" for name in metrics.HISTOGRAMS}
    return exported | {f"medimg_{metrics.MODEL_INFO}"}


def test_rules_name_only_metrics_the_job_exports():
    """A renamed metric must not leave an alert watching a series that never exists."""
    exported = exported_metric_names()
    named = set()
    for rule in rules("expr"):
        named |= set(re.findall(r"(?<![:\w])medimg_[a-z_]+(?![:\w])", rule["expr"]))
    assert named, "the rules watch no job metric"
    assert named <= exported, named - exported


DASHBOARD = MONITORING / "dashboard.json"


def dashboard_queries() -> dict[str, list[str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {panel["title"]: [target["expr"] for target in panel.get("targets", [])]
            for panel in panels if panel["type"] != "row"}


def test_dashboard_json_is_the_generators_output():
    pytest.importorskip("grafana_foundation_sdk")
    generated = subprocess.run([sys.executable, str(MONITORING / "dashboard.py")],
                               capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(generated) == json.loads(DASHBOARD.read_text()), (
        "regenerate: python deploy/monitoring/dashboard.py > deploy/monitoring/dashboard.json")


def test_every_panel_queries_prometheus_for_what_the_job_and_rules_provide():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    recorded = {rule["record"] for rule in rules("record")}
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids) and 0 not in ids, "Grafana needs unique panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
    exprs = " ".join(e for queries in dashboard_queries().values() for e in queries)
    used = set(re.findall(r"\b[a-z_]+:[a-z_0-9]+:[a-z_0-9]+\b", exprs))
    assert used <= recorded, used - recorded
    raw = set(re.findall(r"(?<![:\w])medimg_[a-z_]+(?![:\w])", exprs))
    assert raw <= exported_metric_names(), raw - exported_metric_names()


CLOUD_POLICIES = sorted((MONITORING / "cloud_monitoring").glob("*.json"))


def test_cloud_monitoring_policies_parse_as_alert_policies_of_the_monitoring_api():
    from google.cloud import monitoring_v3  # noqa: PLC0415 - with apache-beam[gcp]

    assert len(CLOUD_POLICIES) >= 6
    alerts = {re.sub(r"(?<!^)([A-Z])", r"_\1", rule["alert"]).lower() for rule in rules("alert")}
    for path in CLOUD_POLICIES:
        # The client library's protobuf parser: an unknown or misspelt field fails here.
        policy = monitoring_v3.AlertPolicy.from_json(path.read_text())
        assert policy.severity in (monitoring_v3.AlertPolicy.Severity.CRITICAL,
                                   monitoring_v3.AlertPolicy.Severity.WARNING), path.name
        assert policy.documentation.content and policy.conditions, path.name
        assert policy.user_labels["prometheus_alert"] in alerts, path.name


def test_cloud_monitoring_promql_conditions_pass_promtool(tmp_path):
    queries = [condition["conditionPrometheusQueryLanguage"]["query"]
               for path in CLOUD_POLICIES
               for condition in json.loads(path.read_text())["conditions"]
               if "conditionPrometheusQueryLanguage" in condition]
    assert queries
    as_rules = {"groups": [{"name": "cloud-monitoring", "rules": [
        {"alert": f"Condition{i}", "expr": query, "for": "1m"}
        for i, query in enumerate(queries)]}]}
    (tmp_path / "conditions.yml").write_text(yaml.safe_dump(as_rules))
    assert "SUCCESS" in run_promtool("check", "rules", str(tmp_path / "conditions.yml"))


def test_cloud_monitoring_counters_are_ones_the_job_counts_on_dataflow():
    """metric_name on Dataflow is the Beam counter's name: count()'s label (a code)."""
    from streaming.contracts.reasons import Reason  # noqa: PLC0415

    codes = {reason.value for reason in Reason} | {"refused", "watch_error", "unavailable"}
    named = set()
    for path in CLOUD_POLICIES:
        for names in re.findall(r'metric_name=~\\?"([^"\\]+)', path.read_text()):
            named |= set(names.split("|"))
    assert {"refused", "unavailable", "not_an_image"} <= named
    assert named <= codes, named - codes

"""deploy/helm/medimg rendered offline (helm-python-sdk: Helm's own Go code, no cluster),
linted, every manifest validated against the Kubernetes schemas (kubernetes-validate),
and the PrometheusRule's rules checked and unit-tested by promtool."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from unit_tests.test_monitoring import promtool

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "medimg"
MONITORING = ROOT / "deploy" / "monitoring"
KUBERNETES = "1.30.0"  # the oldest minor the chart is checked against; kubeVersion >=1.27
VARIANTS = {"cpu": {}, "gpu": yaml.safe_load((CHART / "values-gpu.yaml").read_text())}
CUSTOM = {"monitoring.coreos.com/v1"}  # no schemas in kubernetes-validate: promtool below


def render(values: dict) -> list[dict]:
    rendered = helm.Chart.load(CHART).render(values, name="medimg", namespace="medimg",
                                             is_install=True)
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} rendered"
    return found


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param, render(VARIANTS[request.param])


def stream_pod(docs):
    return find(docs, "Deployment", "medimg-stream")[0]["spec"]["template"]["spec"]


def test_the_chart_lints_clean_for_each_variant():
    for name, values in VARIANTS.items():
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # warning, error
        assert not report["errors"] and not problems, (name, report)


def test_every_manifest_is_valid_kubernetes(variant):
    _, docs = variant
    checked = 0
    for doc in docs:
        if doc["apiVersion"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        checked += 1
    assert checked >= 8


def test_an_invalid_manifest_is_caught():
    """The validation above can fail: a misspelt field is refused."""
    docs = render({})
    deployment = find(docs, "Deployment", "medimg-stream")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_job_runs_alone_and_is_recreated_not_rolled(variant):
    _, docs = variant
    deployment = find(docs, "Deployment", "medimg-stream")[0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_more_than_one_job_replica_is_refused():
    with pytest.raises(helm.HelmError, match="stream.replicas must be 1"):
        render({"stream": {"replicas": 2}})


def test_the_grace_period_fits_the_drain_and_start_up_waits_for_the_lease(variant):
    _, docs = variant
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = stream_pod(docs)
    # Drain: readers stop, a bundle (up to 256 records) is scored and published with
    # retries up to 5 s apart, offsets committed, lease released. Far above a broker blip.
    assert pod["terminationGracePeriodSeconds"] >= 60
    container = pod["containers"][0]
    startup = container["startupProbe"]
    # Broker wait (--startup_timeout_s 60) plus a killed predecessor's lease (ttl) plus
    # the model load, before /metrics answers.
    lease_ttl = values["kafka"]["leaseTtlSeconds"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60 + lease_ttl + 60
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    assert "--metrics_host=0.0.0.0" in container["args"]
    assert container["command"] == ["medimg"] and container["args"][0] == "stream"


def test_secrets_are_files_from_a_secret_never_values():
    docs = render({"kafka": {"saslMechanism": "SCRAM-SHA-512",
                             "securityProtocol": "SASL_SSL", "caSecretKey": "kafka-ca.pem"}})
    assert not [d for d in docs if d["kind"] == "Secret"]  # the operator creates it
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for container in pod["containers"]:
            for env in container.get("env", []):
                assert "valueFrom" not in env, env
                if re.search(r"PASSWORD|USERNAME|TOKEN|SECRET", env["name"]):
                    assert env["name"].endswith("_FILE"), env
                    assert env["value"].startswith("/run/secrets/"), env
        secret_volumes = [v for v in pod["volumes"] if "secret" in v]
        assert secret_volumes, doc["metadata"]["name"]
    container = stream_pod(docs)["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MEDIMG_KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/medimg/kafka-sasl-password"
    assert "--kafka_ssl_cafile=/run/secrets/medimg/kafka-ca.pem" in container["args"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["secrets"]["readOnly"] and mounts["secrets"]["mountPath"] == "/run/secrets/medimg"


def test_every_container_asks_for_resources_and_runs_unprivileged(variant):
    _, docs = variant
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_gpu_variant_asks_for_a_gpu_node_and_runs_the_jax_image(variant):
    name, docs = variant
    pod = stream_pod(docs)
    container = pod["containers"][0]
    limits = container["resources"].get("limits", {})
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert container["image"].startswith("medimg/stream-gpu:")
        assert {"name": "KERAS_BACKEND", "value": "jax"} in container["env"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
        assert container["image"].startswith("medimg/stream-cpu:")


def test_redis_and_the_shared_volumes_are_wired_to_the_job(variant):
    _, docs = variant
    redis = find(docs, "StatefulSet", "medimg-redis")[0]
    assert "--aclfile" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    find(docs, "Service", "medimg-redis")
    container = stream_pod(docs)["containers"][0]
    assert "--redis_url=redis://medimg-redis:6379/0" in container["args"]
    claims = {c["metadata"]["name"]: c["spec"]["accessModes"]
              for c in find(docs, "PersistentVolumeClaim")}
    assert claims == {"medimg-studies": ["ReadWriteMany"], "medimg-models": ["ReadWriteMany"]}
    volumes = {v["name"]: v for v in stream_pod(docs)["volumes"]}
    assert volumes["studies"]["persistentVolumeClaim"]["claimName"] == "medimg-studies"
    assert "--allowed_roots=/studies" in container["args"]


def test_a_registry_on_cloud_storage_needs_no_claim():
    docs = render({"model": {"registry": "gs://bucket/models"}, "redis": {"enabled": False}})
    names = {c["metadata"]["name"] for c in find(docs, "PersistentVolumeClaim")}
    assert names == {"medimg-studies"}
    container = stream_pod(docs)["containers"][0]
    assert not any(a.startswith("--redis_url") for a in container["args"])
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


def test_the_service_monitors_keep_the_job_names_the_alerts_use():
    docs = render({})
    for monitor in find(docs, "ServiceMonitor"):
        component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        service = find(docs, "Service", f"medimg-{component}")[0]
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        assert job == {"stream": "medimg-stream", "topic-metrics": "kafka-topics"}[component]


def test_the_chart_carries_the_same_rules_as_deploy_monitoring():
    for name in ("recording.yml", "alerts.yml"):
        assert (CHART / "files" / name).read_bytes() == (MONITORING / "rules" / name).read_bytes(), (
            f"copy deploy/monitoring/rules/{name} to deploy/helm/medimg/files/")


def test_the_prometheus_rule_passes_promtool(tmp_path):
    rule = find(render({}), "PrometheusRule")[0]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([promtool(), "check", "rules", str(rules_file)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"SUCCESS: \d+ rules found", checked.stdout + checked.stderr)
    # The alert tests of deploy/monitoring, run against the rendered rules.
    tests = yaml.safe_load((MONITORING / "tests" / "alerts_test.yml").read_text())
    tests["rule_files"] = [str(rules_file)]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = subprocess.run([promtool(), "test", "rules", str(tmp_path / "alerts_test.yml")],
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_lint_catches_a_broken_chart(tmp_path):
    """The lint above can fail: a template that does not parse is an error."""
    broken = tmp_path / "medimg"
    shutil.copytree(CHART, broken)
    template = broken / "templates" / "stream-service.yaml"
    template.write_text(template.read_text() + "\n{{- if .Values.stream.metricsPort }}\n")
    report = helm.lint(broken, {}, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] >= 2]

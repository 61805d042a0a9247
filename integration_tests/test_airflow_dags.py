"""Both DAGs on a real Airflow (SQLite in a temporary AIRFLOW_HOME), run with `airflow dags test`.

The nightly retraining runs while a streaming job serves: its promotion must show
up in the job's findings, with no event lost or repeated across the swap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streaming.contracts import validation
from streaming.local import phantoms
from streaming.local.demo import DEMO_MODEL, STUDY_IMAGE_SIZE
from streaming.kafka.admin import ensure_topics
from streaming.tools.modality import event_for_file, publish_events, restamp
from streaming.modeling.registry import ModelRegistry
from streaming.kafka.outcomes import OutcomeLog

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "PYTHONPATH": str(REPO)}
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    return env


def dags_test(env: dict, dag_id: str, conf: dict, log: Path) -> str:
    completed = subprocess.run([AIRFLOW, "dags", "test", dag_id, "--conf", json.dumps(conf)],
                               env=env, capture_output=True, text=True, timeout=900)
    log.write_text(completed.stdout + completed.stderr)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    return completed.stdout + completed.stderr


@pytest.fixture
def registry_copy(phantom_registry, tmp_path) -> Path:
    """The session's phantom registry, copied: these tests promote new versions."""
    copy = tmp_path / "registry"
    shutil.copytree(phantom_registry, copy)
    return copy


@pytest.fixture
def phantom_npz(tmp_path) -> Path:
    return phantoms.write_phantom_npz(tmp_path / "phantoms.npz", 480, 160,
                                      size=STUDY_IMAGE_SIZE, seed=23)


@pytest.mark.slow
def test_nightly_retrain_promotes_while_the_job_serves_then_skips_unchanged_data(
        airflow_env, registry_copy, phantom_npz, kafka, topics, start_job, tmp_path):
    registry = ModelRegistry(str(registry_copy))
    cases = phantoms.generate_study_set(tmp_path / "studies", 8, seed=31, size=STUDY_IMAGE_SIZE)
    chest = [event_for_file(c.path, sender="TEST") for c in cases if c.expected_label]
    ensure_topics(kafka, {topics.events: 3})
    job = start_job("--model_registry", str(registry_copy), "--model_poll_s", "0.5")
    # 480 phantoms: the gate's minimum counts and sensitivity target scaled to match
    # (a 95% lower bound above 0.95 needs hundreds of positives).
    conf = {"data": str(phantom_npz), "model_registry": str(registry_copy),
            "model_name": DEMO_MODEL, "input_size": "64x64", "epochs": 8, "batch_size": 32,
            "augmentation": False, "min_per_class": 15, "holdout_fraction": 0.3,
            "target_sensitivity": 0.7,
            "class_names": list(phantoms.PHANTOM_CLASSES), "work_dir": str(tmp_path / "work"),
            "force": False}

    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        first = [restamp(e) for e in chest]
        publish_events(kafka, topics.events, first)
        assert log.wait_for([e.event_id for e in first], 180), job.log_tail()
        # Events keep arriving while Airflow retrains, gates and promotes.
        during = [restamp(chest[i % len(chest)]) for i in range(400)]
        publisher = threading.Thread(target=publish_events, args=(kafka, topics.events, during),
                                     kwargs={"rate_per_s": 4})
        publisher.start()
        output = dags_test(airflow_env, "nightly_retrain", conf, tmp_path / "nightly-1.log")
        assert registry.production(DEMO_MODEL) == "2", (
            registry.status(DEMO_MODEL, "2") if "2" in registry.versions(DEMO_MODEL)
            else output[-3000:])
        after = [restamp(e) for e in chest]
        publish_events(kafka, topics.events, after)
        publisher.join()
        everything = first + during + after
        assert log.wait_for([e.event_id for e in everything], 300), job.log_tail()
        log.drain(quiet_s=3)
        assert job.stop() == 0

    # The job switched to the promoted version without a restart, and lost nothing.
    versions = [o.document["model"]["version"] for e in everything for o in log.by_event[e.event_id]]
    assert versions[:len(first)] == ["1"] * len(first)
    assert versions[-len(after):] == ["2"] * len(after)
    assert log.duplicates() == {}
    status = registry.status(DEMO_MODEL, "2")
    assert status["state"] == "promoted" and status["production_version"] == "1"
    assert status["split"] == "holdout" and status["reference_version"] in ("1", "2")
    assert not list((tmp_path / "work").iterdir())  # the run's shards are gone
    version_dir = registry_copy / DEMO_MODEL / "2"
    for name in ("model.keras", "architecture.json", "model.weights.h5", "saved_model.pb",
                 "metadata.json"):
        assert (version_dir / name).is_file(), name
    metadata = registry.metadata(DEMO_MODEL, "2")
    assert metadata.extra["data_fingerprint"].startswith("sha256:")

    # Same data again: the nightly run says so and trains nothing.
    output = dags_test(airflow_env, "nightly_retrain", conf, tmp_path / "nightly-2.log")
    assert "nothing new to learn" in output
    assert registry.versions(DEMO_MODEL) == ["1", "2"]


_INSPECT_NIGHTLY = """
import importlib.util, json, sys
from batch_training.recipe import config_from_params, policy_from_params
spec = importlib.util.spec_from_file_location("nightly_retrain", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.nightly_retrain()
defaults = {name: dag.params[name] for name in dag.params.keys()}
defaults.update(data="x.npz", model_registry="r")
config_from_params(defaults), policy_from_params(defaults)  # the defaults are accepted
refused = {}
for name, value in json.loads(sys.argv[2]).items():
    try:
        dag.params.get_param(name).resolve(value)
        refused[name] = False
    except Exception:
        refused[name] = True
print(json.dumps({
    "dagrun_timeout_s": dag.dagrun_timeout.total_seconds(),
    "task_timeouts_s": {t.task_id: t.execution_timeout and t.execution_timeout.total_seconds()
                        for t in dag.tasks},
    "trigger_rules": {t.task_id: getattr(t.trigger_rule, "value", t.trigger_rule)
                      for t in dag.tasks},
    "refused": refused}))
"""


def test_nightly_retrain_has_timeouts_cleans_up_and_refuses_params_the_recipe_would(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": str(REPO)}
    bad = {"target_sensitivity": 0, "min_per_class": 0, "urgent_specificity": 1,
           "holdout_fraction": 0.5, "auc_tolerance": -0.01}
    completed = subprocess.run(
        [sys.executable, "-c", _INSPECT_NIGHTLY, str(REPO / "dags" / "nightly_retrain.py"),
         json.dumps(bad)], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    facts = json.loads(completed.stdout.strip().splitlines()[-1])
    timeouts = facts["task_timeouts_s"]
    assert set(timeouts) >= {"data_changed", "preprocess", "train", "evaluate",
                             "gate_and_promote", "remove_shards"}
    assert all(timeouts.values()), timeouts
    # The run's limit leaves room for the tasks, and the clean-up runs whatever happened.
    assert facts["dagrun_timeout_s"] >= timeouts["train"] + timeouts["preprocess"]
    assert facts["trigger_rules"]["remove_shards"] == "all_done"
    assert facts["refused"] == dict.fromkeys(bad, True)
    # The same values are refused by the recipe itself, so the params are not stricter.
    from batch_training.recipe import config_from_params, policy_from_params  # noqa: PLC0415
    for name, value in bad.items():
        params = {"data": "x.npz", "model_registry": "r", name: value}
        with pytest.raises(ValueError):
            config_from_params(params)
            policy_from_params(params)


def test_batch_inference_dag_writes_findings_in_the_schema(airflow_env, phantom_registry,
                                                           tmp_path):
    cases = phantoms.generate_study_set(tmp_path / "studies", 4, seed=41, size=STUDY_IMAGE_SIZE)
    (tmp_path / "studies" / "broken.dcm").write_text("not an image")
    conf = {"studies": str(tmp_path / "studies"), "model_registry": str(phantom_registry),
            "model_name": DEMO_MODEL, "output_dir": str(tmp_path / "findings")}
    dags_test(airflow_env, "batch_inference", conf, tmp_path / "batch.log")
    (run_dir,) = (tmp_path / "findings").iterdir()
    findings = [json.loads(line) for line in (run_dir / "findings-00000-of-00001.jsonl").open()]
    dead = [json.loads(line) for line in (run_dir / "dead_letters-00000-of-00001.jsonl").open()]
    assert len(findings) == len(cases) and [d["reason"] for d in dead] == ["not_an_image"]
    for finding in findings:
        assert validation.errors(validation.FINDING, finding, strict=True) == []
        assert finding["model"] == {"name": DEMO_MODEL, "version": "1"}
    truth = {c.sop_instance_uid: c.expected_label for c in cases}
    for finding in findings:
        expected = truth[finding["sop_instance_uid"]]
        assert finding["status"] == ("not_applicable" if expected is None else "scored")

"""Nightly retraining: preprocess, train, evaluate, gate, and promote only if it earns it.

Thin by design: every task calls batch_training.recipe, the same code `medimg train`
runs, and nothing heavy is imported at module level (the scheduler parses this file
constantly). A running streaming job picks up a promoted version by itself.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

LOG = logging.getLogger(__name__)


@dag(
    dag_id="nightly_retrain",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["medimg"],
    params={
        "data": Param(os.environ.get("MEDIMG_TRAINING_DATA", ""), type="string",
                      description="labeled data: .npz, <split>/<class>/ folder, or DICOM "
                                  "folder with labels_csv"),
        "labels_csv": Param(None, type=["null", "string"]),
        "model_registry": Param(os.environ.get("MEDIMG_MODEL_REGISTRY", ""), type="string"),
        "model_name": Param("pneumonia-cnn", type="string"),
        "architecture": Param("compact_cnn", enum=["compact_cnn", "residual_net", "resnet50"]),
        "input_size": Param("28x28", type="string"),
        "channels": Param(1, enum=[1, 3]),
        "epochs": Param(40, type="integer", minimum=1),
        "batch_size": Param(64, type="integer", minimum=1),
        "augmentation": Param(True, type="boolean"),
        "seed": Param(1234, type="integer"),
        "class_names": Param(None, type=["null", "array"]),
        "target_sensitivity": Param(0.95, type="number", minimum=0, maximum=1),
        "auc_tolerance": Param(0.01, type="number", minimum=0),
        "work_dir": Param(os.environ.get("MEDIMG_WORK_DIR", "/tmp/medimg-work"), type="string",
                          description="where shards are written; shared by the tasks"),
        "force": Param(False, type="boolean", description="retrain even if the data is unchanged"),
    },
)
def nightly_retrain():
    @task.short_circuit
    def data_changed() -> bool:
        """Skip the rest, and say so, when production was trained on this very data."""
        from batch_training.recipe import check_data  # noqa: PLC0415
        params = get_current_context()["params"]
        result = check_data(params["data"], params["model_registry"], params["model_name"],
                            params["labels_csv"])
        LOG.info(result.explain())  # the task log is where an operator looks
        return params["force"] or not result.unchanged

    @task
    def preprocess() -> str:
        from batch_training.recipe import config_from_params, preprocess  # noqa: PLC0415
        context = get_current_context()
        params = context["params"]
        shards = os.path.join(params["work_dir"], context["run_id"].replace(":", "_"), "shards")
        return preprocess(config_from_params(params), shards, params["labels_csv"])

    @task
    def train(shards_dir: str) -> str:
        from batch_training.recipe import config_from_params, train  # noqa: PLC0415
        return train(config_from_params(get_current_context()["params"]), shards_dir,
                     progress=False)

    @task
    def evaluate(version: str) -> dict:
        """The gate's evaluation: the candidate and production re-scored on the same
        validation data, the candidate also through the serving path; records nothing."""
        from batch_training.promotion import judge  # noqa: PLC0415
        from batch_training.recipe import policy_from_params  # noqa: PLC0415
        params = get_current_context()["params"]
        decision = judge(params["model_registry"], params["model_name"], version,
                         params["data"], policy_from_params(params),
                         class_names=params["class_names"], labels_csv=params["labels_csv"])
        LOG.info("candidate %s/%s: %s", params["model_name"], version, decision.candidate)
        return decision.to_dict()

    @task
    def gate_and_promote(decision: dict) -> dict:
        from batch_training.promotion import GateDecision, record_decision  # noqa: PLC0415
        decision = record_decision(get_current_context()["params"]["model_registry"],
                                   GateDecision(**decision))
        LOG.info(("promoted: " if decision.promoted else "rejected: ") + decision.reason)
        return decision.to_dict()

    changed = data_changed()
    shards = preprocess()
    changed >> shards
    version = train(shards)
    gate_and_promote(evaluate(version))


nightly_retrain()

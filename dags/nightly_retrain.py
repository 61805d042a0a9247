"""Nightly retraining: preprocess, train, evaluate, gate, and promote only if it earns it.

Thin by design: every task calls batch_training.recipe, the same code `medimg train`
runs, and nothing heavy is imported at module level (the scheduler parses this file
constantly). A running streaming job picks up a promoted version by itself.

Retries: every task may run again. Preprocessing rewrites its run's shards; a
retried ``train`` returns the version an earlier attempt registered (recorded in the
run's folder) instead of registering another; ``gate_and_promote`` finds a decision
already recorded (the pointer moved, the status written) and does nothing twice.
``work_dir`` is shared storage that every worker mounts at the same path: the shards
of one run live in ``<work_dir>/<run id>/`` and ``remove_shards`` deletes them once
the run is over, whatever its outcome.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

LOG = logging.getLogger(__name__)


# Generous for PneumoniaMNIST-sized data on CPU workers; a run that needs more is stuck,
# and a stuck nightly run would block the next one (max_active_runs=1).
CHECK_TIMEOUT = timedelta(minutes=15)
PREPROCESS_TIMEOUT = timedelta(hours=1)
TRAIN_TIMEOUT = timedelta(hours=4)
EVALUATE_TIMEOUT = timedelta(hours=1)
RECORD_TIMEOUT = timedelta(minutes=10)
RUN_TIMEOUT = timedelta(hours=8)  # the tasks' timeouts plus a retry of the longest


@dag(
    dag_id="nightly_retrain",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10),
                  "execution_timeout": CHECK_TIMEOUT},
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
        # The bounds are the ones TrainingConfig and GatePolicy enforce, so a bad value is
        # refused when the run is triggered, not hours later.
        "target_sensitivity": Param(0.95, type="number", exclusiveMinimum=0, maximum=1),
        "auc_tolerance": Param(0.01, type="number", minimum=0, exclusiveMaximum=0.5,
                               description="AUC non-inferiority margin against production "
                                           "and the best promoted model"),
        "specificity_tolerance": Param(0.05, type="number", minimum=0, exclusiveMaximum=0.5),
        "min_specificity": Param(0.5, type="number", minimum=0, exclusiveMaximum=1),
        "min_per_class": Param(30, type="integer", minimum=1,
                               description="images of each class the calibration and "
                                           "holdout splits need before they are trusted"),
        "calibration_fraction": Param(0.15, type="number", minimum=0, exclusiveMaximum=0.5),
        "holdout_fraction": Param(0.15, type="number", minimum=0, exclusiveMaximum=0.5),
        "urgent_specificity": Param(0.95, type=["null", "number"], exclusiveMinimum=0,
                                    exclusiveMaximum=1),
        "work_dir": Param(os.environ.get("MEDIMG_WORK_DIR", "/tmp/medimg-work"), type="string",
                          description="shared storage every worker mounts at this path; "
                                      "each run's shards go in <work_dir>/<run id>/ and are "
                                      "removed when the run ends"),
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

    @task(execution_timeout=PREPROCESS_TIMEOUT)
    def preprocess() -> str:
        from batch_training.recipe import config_from_params, preprocess, run_folder  # noqa: PLC0415
        context = get_current_context()
        params = context["params"]
        shards = run_folder(params["work_dir"], context["run_id"]) / "shards"
        return preprocess(config_from_params(params), str(shards), params["labels_csv"])

    @task(execution_timeout=TRAIN_TIMEOUT)
    def train(shards_dir: str) -> str:
        from batch_training.recipe import (CANDIDATE_MARKER, config_from_params,  # noqa: PLC0415
                                           run_folder, train)
        context = get_current_context()
        params = context["params"]
        marker = run_folder(params["work_dir"], context["run_id"]) / CANDIDATE_MARKER
        return train(config_from_params(params), shards_dir, progress=False,
                     marker=str(marker))

    @task(execution_timeout=EVALUATE_TIMEOUT)
    def evaluate(version: str) -> dict:
        """The gate's evaluation: the candidate, production and the reference re-scored
        on the candidate's holdout, the candidate also through the serving path;
        records nothing."""
        from batch_training.promotion import judge  # noqa: PLC0415
        from batch_training.recipe import policy_from_params  # noqa: PLC0415
        params = get_current_context()["params"]
        decision = judge(params["model_registry"], params["model_name"], version,
                         params["data"], policy_from_params(params),
                         class_names=params["class_names"], labels_csv=params["labels_csv"])
        LOG.info("candidate %s/%s: %s", params["model_name"], version, decision.candidate)
        return decision.to_dict()

    @task(execution_timeout=RECORD_TIMEOUT)
    def gate_and_promote(decision: dict) -> dict:
        from batch_training.promotion import GateDecision, record_decision  # noqa: PLC0415
        decision = record_decision(get_current_context()["params"]["model_registry"],
                                   GateDecision(**decision))
        LOG.info(("promoted: " if decision.promoted else "rejected: ") + decision.reason)
        return decision.to_dict()

    @task(trigger_rule="all_done", execution_timeout=RECORD_TIMEOUT)
    def remove_shards() -> None:
        """Delete this run's shards, also after a failure (its retries are over by then)."""
        from batch_training.recipe import remove_run_folder  # noqa: PLC0415
        context = get_current_context()
        if remove_run_folder(context["params"]["work_dir"], context["run_id"]):
            LOG.info("removed this run's shards")

    changed = data_changed()
    shards = preprocess()
    changed >> shards
    version = train(shards)
    gate_and_promote(evaluate(version)) >> remove_shards()


nightly_retrain()

"""Batch inference: score a folder of studies with the production model.

Runs the streaming job's own steps in a Beam batch pipeline (pinned to the local
runner unless told otherwise) and writes findings and dead letters as JSON lines.
"""

from __future__ import annotations

import logging
import os

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

LOG = logging.getLogger(__name__)


@dag(
    dag_id="batch_inference",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1},
    tags=["medimg"],
    params={
        "studies": Param(os.environ.get("MEDIMG_STUDIES", ""), type="string",
                         description="folder of DICOM/PNG/JPEG files to score"),
        "model_registry": Param(os.environ.get("MEDIMG_MODEL_REGISTRY", ""), type="string"),
        "model_name": Param("pneumonia-cnn", type="string"),
        "output_dir": Param(os.environ.get("MEDIMG_FINDINGS_DIR", "/tmp/medimg-findings"),
                            type="string"),
        "modality": Param("OT", type="string", description="for PNG/JPEG files (no header)"),
    },
)
def batch_inference():
    @task
    def score_studies() -> dict:
        from batch_training.batch_inference import run_batch_inference  # noqa: PLC0415
        context = get_current_context()
        params = context["params"]
        output = os.path.join(params["output_dir"], context["run_id"].replace(":", "_"))
        result = run_batch_inference(params["studies"], params["model_registry"],
                                     params["model_name"], output, modality=params["modality"])
        LOG.info("%d images scored by %s; findings in %s", result.events, result.model,
                 result.findings_path)
        return result.to_dict()

    score_studies()


batch_inference()

"""The retraining recipe: preprocess, train, evaluate, gate, promote.

One implementation for both callers: ``medimg train`` runs it in one go, and the
nightly Airflow DAG runs the same steps as separate tasks. Each step takes and
returns plain values (paths, versions, dicts) so Airflow can pass them between tasks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path

from batch_training.datasets import fingerprint_source
from batch_training.preprocess import run_preprocessing
from batch_training.promotion import GateDecision, GatePolicy, gate
from batch_training.train import TrainingConfig, train_and_register
from streaming.modeling.registry import REJECTED, ModelRegistry

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """The data's fingerprint against production's, and against rejected candidates'.

    ``rejected_version``: a candidate trained on exactly this data and rejected by the
    gate (its reason in ``rejected_reason``): retraining the same recipe on the same
    data every night would only be rejected again.
    """
    fingerprint: str
    production_version: str | None
    production_fingerprint: str | None
    rejected_version: str | None = None
    rejected_reason: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.rejected_version is not None or (
            self.production_fingerprint is not None
            and self.fingerprint == self.production_fingerprint)

    def explain(self) -> str:
        if self.production_fingerprint is not None and (
                self.fingerprint == self.production_fingerprint):
            return (f"the data fingerprint {self.fingerprint[:19]}... is the one production "
                    f"version {self.production_version} was trained on; nothing new to learn "
                    "from (set force to retrain anyway)")
        if self.rejected_version is not None:
            return (f"the data fingerprint {self.fingerprint[:19]}... is the one version "
                    f"{self.rejected_version} was trained on, and the gate rejected it "
                    f"({self.rejected_reason}); nothing new to learn from (set force to "
                    "retrain anyway, e.g. after changing the recipe)")
        return f"new data fingerprint {self.fingerprint[:19]}..."


def check_data(data: str, model_registry: str, model_name: str,
               labels_csv: str | None = None) -> DataCheck:
    """Has the labeled data changed since production, or a rejected candidate, was trained?"""
    registry = ModelRegistry(model_registry)
    fingerprint = fingerprint_source(data, labels_csv)
    production = registry.production(model_name)
    trained_on = (registry.metadata(model_name, production).extra.get("data_fingerprint")
                  if production else None)
    for version in reversed(registry.versions(model_name)):
        status = registry.status(model_name, version)
        if status.get("state") == REJECTED and registry.metadata(
                model_name, version).extra.get("data_fingerprint") == fingerprint:
            return DataCheck(fingerprint, production, trained_on, version, status.get("reason"))
    return DataCheck(fingerprint, production, trained_on)


def run_folder(work_dir: str, run_id: str) -> Path:
    """The folder one run keeps its shards in, under the shared ``work_dir``.

    Every task of a run may execute on another worker, so ``work_dir`` must be shared
    storage (a network file system) that all of them mount at the same path.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return Path(work_dir) / safe


def remove_run_folder(work_dir: str, run_id: str) -> bool:
    """Delete a run's folder (its shards); True if there was one. Safe to repeat."""
    folder = run_folder(work_dir, run_id)
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True


def preprocess(config: TrainingConfig, shards_dir: str, labels_csv: str | None = None) -> str:
    """The Beam batch pipeline: the labeled data -> TFRecord shards in ``shards_dir``."""
    run_preprocessing(config.data, shards_dir, config.preprocessing, labels_csv=labels_csv,
                      class_names=config.class_names)
    return shards_dir


CANDIDATE_MARKER = "candidate.json"


def train(config: TrainingConfig, shards_dir: str, progress: bool = True,
          marker: str | None = None) -> str:
    """Train on the shards and register the result as a candidate; returns its version.

    ``marker``: a file recording the version this run registered. When it names a
    registered version already (a retry after registering), that version is returned
    and nothing is trained again, so retries leave no stray candidates behind.
    """
    registry = ModelRegistry(config.model_registry)
    if marker and Path(marker).is_file():
        version = json.loads(Path(marker).read_text())["version"]
        if version in registry.versions(config.model_name):
            LOG.info("version %s was registered by an earlier attempt of this run", version)
            return version
    record = train_and_register(dataclasses.replace(config, data=shards_dir, promote="never"),
                                progress=progress)
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).write_text(json.dumps({"version": record.version}))
    return record.version


def run_recipe(config: TrainingConfig, *, labels_csv: str | None = None, force: bool = True,
               policy: GatePolicy = GatePolicy(), work_dir: str | None = None,
               progress: bool = True) -> GateDecision | DataCheck:
    """Everything in one go; returns the gate's decision, or the DataCheck when skipped."""
    if not force:
        data_check = check_data(config.data, config.model_registry, config.model_name,
                                labels_csv)
        LOG.info(data_check.explain())
        if data_check.unchanged:
            return data_check
    with tempfile.TemporaryDirectory(prefix="medimg-shards-", dir=work_dir) as scratch:
        shards = preprocess(config, str(Path(scratch) / "shards"), labels_csv)
        version = train(config, shards, progress)
    return gate(config.model_registry, config.model_name, version, config.data, policy,
                class_names=config.class_names, labels_csv=labels_csv)


def parse_input_size(text: str) -> tuple[int, int]:
    """(height, width) from "28" or "224x224"; ValueError saying what to give otherwise."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"input size {text!r}: give one number (28) or HEIGHTxWIDTH (224x224)")
    return parts[0], parts[1]


def config_from_params(params: dict) -> TrainingConfig:
    """A TrainingConfig from a DAG run's params (strings and numbers from the UI or CLI)."""
    height, width = parse_input_size(params.get("input_size", "28x28"))
    return TrainingConfig(
        data=params["data"], model_registry=params["model_registry"],
        model_name=params.get("model_name", "pneumonia-cnn"),
        architecture=params.get("architecture", "compact_cnn"), height=height, width=width,
        channels=int(params.get("channels", 1)), epochs=int(params.get("epochs", 40)),
        batch_size=int(params.get("batch_size", 64)),
        augmentation=bool(params.get("augmentation", True)),
        target_sensitivity=float(params.get("target_sensitivity", 0.95)),
        calibration_fraction=float(params.get("calibration_fraction", 0.15)),
        holdout_fraction=float(params.get("holdout_fraction", 0.15)),
        min_calibration_per_class=int(params.get("min_per_class", 30)),
        urgent_specificity=(None if params.get("urgent_specificity") is None
                            else float(params["urgent_specificity"])),
        seed=int(params.get("seed", 1234)),
        modalities=tuple(params.get("modalities", ["CR", "DX"])),
        body_parts=tuple(params.get("body_parts", ["CHEST"])),
        class_names=tuple(params["class_names"]) if params.get("class_names") else None,
        promote="never")


def policy_from_params(params: dict) -> GatePolicy:
    """The gate's policy from a DAG run's params; ValueError for values it would refuse."""
    defaults = GatePolicy()
    return GatePolicy(
        auc_tolerance=float(params.get("auc_tolerance", defaults.auc_tolerance)),
        specificity_tolerance=float(params.get("specificity_tolerance",
                                               defaults.specificity_tolerance)),
        target_sensitivity=float(params.get("target_sensitivity", defaults.target_sensitivity)),
        min_specificity=float(params.get("min_specificity", defaults.min_specificity)),
        first_model_auc_floor=float(params.get("first_model_auc_floor",
                                               defaults.first_model_auc_floor)),
        min_per_class=int(params.get("min_per_class", defaults.min_per_class)))

"""Train a classifier on labeled images and register it as the next model version.

``train_and_register(TrainingConfig(...))`` is the recipe ``medimg train`` runs:

1. load the data through the serving path's decoding and preprocessing;
2. divide the training split by role (``batch_training.roles``): fitting, threshold
   calibration, and the gate's holdout; the validation split only stops training;
3. fit a Keras model on the fitting images, with augmentation (training only), a
   cosine learning-rate schedule and early stopping on validation AUC; no class
   weights, so scores stay probabilities the thresholds can be read on;
4. on the calibration split, choose the operating threshold for a target sensitivity
   (a triage tool must not miss disease), with a margin so that new images reach the
   target too, and the urgent threshold for a target specificity; refuse when that
   split holds too few images of a class for either to mean anything;
5. register the version: ``model.keras``, ``architecture.json`` + ``model.weights.h5``,
   a TensorFlow SavedModel (``saved_model.pb`` + ``variables/``, the layout TF Serving
   loads from ``<registry>/<name>/<N>/``), ``history.json``, the evaluation report
   (``report/``) and the metadata (preprocessing, classes, thresholds, applicability,
   metrics, data fingerprint, training configuration, code version).

The production pointer moves only as ``promote`` says. Runs on Keras' TensorFlow
backend by default; the saved model has no augmentation layers and loads and scores
identically on any backend.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from batch_training.datasets import LabeledData, load_labeled_data
from batch_training.evaluation import (EvaluationResult, evaluate_scores, operating_threshold,
                                       sensitivity_lower_bound, threshold_for_specificity,
                                       write_report)
from batch_training.models import INPUT_NAME, build_model, explained_layer_name
from batch_training.roles import CALIBRATION, FIT, HOLDOUT, DataRoles, too_few
from streaming.imaging.preprocessing import PreprocessingSpec
from streaming.modeling.metadata import Applicability, ModelMetadata, utc_now
from streaming.modeling.registry import MODEL_FILE, ModelRegistry

logger = logging.getLogger(__name__)

PROMOTE_CHOICES = ("always", "if_none", "never")
LEARNING_RATE_SCHEDULES = ("cosine", "constant")
HISTORY_FILE = "history.json"
ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "model.weights.h5"  # Keras 3 requires the .weights.h5 suffix
REPORT_DIR = "report"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything one training run needs; saved into the model's metadata as is.

    ``data``: an .npz file or a train/validation folder (see ``batch_training.datasets``).
    ``positive_class``: the finding the model reports; default the last class.
    ``calibration_fraction`` / ``holdout_fraction``: shares of the training images
    (by role key, see ``batch_training.roles``) that set the thresholds and that the
    promotion gate judges on; neither is fitted on. ``calibration_fraction`` 0 keeps
    ``threshold`` and ``urgent_threshold`` as given. The threshold is the highest
    reaching ``target_sensitivity + sensitivity_margin`` on the calibration images, and
    more if needed for the exact lower confidence bound of that sensitivity to reach
    the target (``fitted_sensitivity``): the gate asks the same bound of the holdout,
    and the margin (0.03) buys that back on large splits, the bound on small ones. ``urgent_threshold`` is set where
    ``urgent_specificity`` of the calibration negatives score below it (None keeps
    the configured one); it is never below the threshold.
    ``min_calibration_per_class``: with fewer positive or other calibration images
    than this (30) a threshold read off them is noise: it is still set, but the
    metadata says so (``metrics.calibration.too_few``) and the promotion gate refuses
    to judge the version. The urgent threshold needs at least
    5 / (1 - ``urgent_specificity``) calibration negatives (100 at 0.95), so that about
    5 of them lie above it; with fewer the configured one is kept and the metadata
    says why (``metrics.calibration.urgent``).
    ``class_weighting``: weight classes inversely to their frequency ("balanced"). Off
    by default: weights bend the probabilities thresholds are read on.
    ``augmentation``: random rotation (up to ``rotation_degrees``), translation and
    zoom (fractions of the size), contrast, and optionally a horizontal flip (off by
    default: anatomy is lateralized); never a vertical flip. Training only.
    ``learning_rate_schedule``: "cosine" decays ``learning_rate`` over ``epochs``.
    ``promote``: "always" moves production to the new version, "if_none" only when
    there is no production version yet, "never" leaves it.
    """
    data: str
    model_registry: str
    model_name: str = "pneumonia-cnn"
    architecture: str = "compact_cnn"
    height: int = 28
    width: int = 28
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    learning_rate_schedule: str = "cosine"
    early_stopping_patience: int = 10
    class_weighting: bool = False
    augmentation: bool = True
    rotation_degrees: float = 15.0
    translation: float = 0.15
    zoom: float = 0.15
    contrast: float = 0.3
    horizontal_flip: bool = False
    calibration_fraction: float = 0.15
    holdout_fraction: float = 0.15
    min_calibration_per_class: int = 30
    target_sensitivity: float = 0.95
    sensitivity_margin: float = 0.03
    urgent_specificity: float | None = 0.95
    seed: int = 1234
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)
    class_names: tuple[str, ...] | None = None
    positive_class: str | None = None
    threshold: float = 0.5
    urgent_threshold: float = 0.9
    promote: str = "if_none"

    def __post_init__(self):
        if self.promote not in PROMOTE_CHOICES:
            raise ValueError(f"promote must be one of {', '.join(PROMOTE_CHOICES)}, "
                             f"got {self.promote!r}")
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise ValueError("learning_rate_schedule must be one of "
                             f"{', '.join(LEARNING_RATE_SCHEDULES)}, "
                             f"got {self.learning_rate_schedule!r}")
        if not 0.0 <= self.threshold <= self.urgent_threshold <= 1.0:
            raise ValueError("need 0 <= threshold <= urgent_threshold <= 1, got "
                             f"{self.threshold} and {self.urgent_threshold}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not 0.0 <= self.calibration_fraction < 0.5:
            raise ValueError("calibration_fraction must be in [0, 0.5), got "
                             f"{self.calibration_fraction}")
        if not 0.0 <= self.holdout_fraction < 0.5:
            raise ValueError(f"holdout_fraction must be in [0, 0.5), got {self.holdout_fraction}")
        self.data_roles  # noqa: B018 - refuses fractions that leave too little to fit on
        if self.min_calibration_per_class < 1:
            raise ValueError("min_calibration_per_class must be at least 1, got "
                             f"{self.min_calibration_per_class}")
        if self.urgent_specificity is not None and not 0.0 < self.urgent_specificity < 1.0:
            raise ValueError(f"urgent_specificity must be in (0, 1) or None, got "
                             f"{self.urgent_specificity}")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got "
                             f"{self.target_sensitivity}")
        if self.sensitivity_margin < 0.0:
            raise ValueError(f"sensitivity_margin must not be negative, got "
                             f"{self.sensitivity_margin}")

    @property
    def calibration_target(self) -> float:
        """The sensitivity the threshold is fitted to on the calibration split."""
        return min(1.0, self.target_sensitivity + self.sensitivity_margin)

    @property
    def data_roles(self) -> DataRoles:
        return DataRoles(self.calibration_fraction, self.holdout_fraction)

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return PreprocessingSpec(self.height, self.width, self.channels,
                                 tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass(eq=False)
class TrainingSplits:
    """The training images by role (``batch_training.roles``).

    ``fit_*``: what the model learns from; ``calibration_*``: chooses the thresholds;
    ``holdout_*``: kept for the promotion gate (training only reports on it). Empty
    when their fraction is 0. Labels index ``LabeledData.classes``.
    """
    fit_x: np.ndarray
    fit_y: np.ndarray
    calibration_x: np.ndarray
    calibration_y: np.ndarray
    holdout_x: np.ndarray = None
    holdout_y: np.ndarray = None

    def __post_init__(self):
        if self.holdout_x is None:
            self.holdout_x, self.holdout_y = self.fit_x[:0], self.fit_y[:0]


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The operating and urgent thresholds and how they were chosen (None: configured)."""
    threshold: float
    result: EvaluationResult | None
    urgent_threshold: float | None = None
    urgent: dict | None = None
    too_few: str | None = None
    fitted: float | None = None


def train_and_register(config: TrainingConfig, progress: bool = True) -> ModelMetadata:
    """Train one model per ``config`` and register it; returns the registered metadata."""
    started = time.monotonic()
    data, positive_class = load_training_data(config)
    positive_index = data.classes.index(positive_class)
    splits = carve_splits(data, config.data_roles)
    logger.info("training %s on %d images (%d held out for calibration, %d for the gate, %d "
                "for early stopping, %d files skipped), classes %s", config.architecture,
                len(splits.fit_x), len(splits.calibration_x), len(splits.holdout_x),
                len(data.val_x), data.skipped, ", ".join(data.classes))

    weights = class_weights(splits.fit_y, config)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.architecture, config.preprocessing.input_shape, len(data.classes))
    fit_started = time.monotonic()
    history, best_epoch = fit(model, splits, data, config, weights, progress)
    fit_seconds = time.monotonic() - fit_started

    calibration = calibrate(model, splits, positive_index, positive_class, config)
    val_labels = (data.val_y == positive_index).astype(np.int64)
    val_scores = predict_positive(model, data.val_x, positive_index)
    validation = evaluate_scores(val_labels, val_scores, calibration.threshold, positive_class)
    logger.info("validation AUC %.4f, accuracy at 0.5 %.4f; at threshold %.4f sensitivity "
                "%.4f, specificity %.4f", validation.auc, validation.accuracy_at_0_5,
                validation.threshold, validation.sensitivity, validation.specificity)

    holdout = holdout_result(model, splits, positive_index, positive_class, calibration)
    training = {"config": config.to_dict(), "epochs_trained": len(history["loss"]),
                "best_epoch": best_epoch, "train_images": len(splits.fit_x),
                "calibration_images": len(splits.calibration_x),
                "holdout_images": len(splits.holdout_x),
                "val_images": len(data.val_x), "skipped_files": data.skipped,
                "class_weights": _json_class_weights(weights),
                "fit_seconds": round(fit_seconds, 1),
                "wall_seconds": round(time.monotonic() - started, 1)}
    document = metadata_document(config, data.classes, positive_class,
                                 training_metrics(validation, calibration, config, holdout),
                                 data.fingerprint, training, calibration)
    # Which activations the reporter's Grad-CAM explains: the last feature map before pooling.
    document["explained_layer"] = explained_layer_name(model)
    registry = ModelRegistry(config.model_registry)
    with tempfile.TemporaryDirectory(prefix="medimg-train-") as staging:
        write_model_files(model, Path(staging), history)
        write_report(validation, val_labels, val_scores, Path(staging) / REPORT_DIR,
                     title=f"{config.model_name}: {config.architecture} on "
                           f"{Path(config.data).name} (validation)", history=history)
        record = registry.register(staging, document)
    logger.info("registered %s", record.model_id)
    promote(registry, record, config.promote)
    return record


def load_training_data(config: TrainingConfig) -> tuple[LabeledData, str]:
    """The preprocessed data and the positive class (``config.positive_class`` or the last)."""
    data = load_labeled_data(config.data, config.preprocessing, config.class_names)
    positive_class = config.positive_class or data.classes[-1]
    if positive_class not in data.classes:
        raise ValueError(f"positive_class {positive_class!r} is not one of the classes "
                         f"{', '.join(data.classes)}")
    return data, positive_class


def carve_splits(data: LabeledData, roles: DataRoles) -> TrainingSplits:
    """Divide the training images by role; the validation split is left alone.

    Each image's role follows from its role key (its group, else its bytes), so the
    gate finds the same holdout later from the raw data, and no group straddles roles.
    """
    if data.train_keys is None or len(data.train_keys) != len(data.train_y):
        raise ValueError("the training data carries no role keys; read it with "
                         "batch_training.datasets.load_labeled_data")
    assigned = roles.assign(data.train_keys)
    fit, calibration, holdout = (assigned == FIT, assigned == CALIBRATION, assigned == HOLDOUT)
    if not fit.any():
        raise ValueError(f"no training image is left to fit on among {len(assigned)}; add "
                         "images or lower calibration_fraction and holdout_fraction")
    return TrainingSplits(data.train_x[fit], data.train_y[fit], data.train_x[calibration],
                          data.train_y[calibration], data.train_x[holdout],
                          data.train_y[holdout])


def class_weights(labels: np.ndarray, config: TrainingConfig) -> dict[int, float] | None:
    """Keras ``class_weight``: "balanced" weights over the fitting labels, or None when off."""
    if not config.class_weighting:
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(label): float(weight) for label, weight in zip(present, weights)}


def _json_class_weights(weights: dict[int, float] | None) -> dict[str, float] | None:
    return None if weights is None else {str(k): round(v, 6) for k, v in weights.items()}


def augmentation(config: TrainingConfig) -> keras.Sequential:
    """Random transforms plausible for radiographs, active only when training.

    Backend-agnostic Keras layers; the value range of contrast clipping is the
    normalized range of [0, 1] pixels, so normalization (mean/std) is respected.
    """
    spec = config.preprocessing
    low = min((0.0 - m) / s for m, s in zip(spec.mean, spec.std))
    high = max((1.0 - m) / s for m, s in zip(spec.mean, spec.std))
    seed = config.seed
    transforms = [
        keras.layers.RandomRotation(config.rotation_degrees / 360.0, seed=seed),
        keras.layers.RandomTranslation(config.translation, config.translation, seed=seed + 1),
        keras.layers.RandomZoom(config.zoom, seed=seed + 2),
        keras.layers.RandomContrast(config.contrast, value_range=(low, high), seed=seed + 3),
    ]
    if config.horizontal_flip:
        transforms.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(transforms, name="augmentation")


def training_model(model: keras.Model, config: TrainingConfig) -> keras.Model:
    """``model`` behind the augmentation layers, sharing its weights.

    Only ``model`` is saved and served: augmentation never reaches the registry, so
    export and cross-backend scoring see the plain classifier.
    """
    if not config.augmentation:
        return model
    inputs = keras.Input(shape=model.input_shape[1:], name=INPUT_NAME)
    return keras.Model(inputs, model(augmentation(config)(inputs)), name=f"{model.name}_training")


def _optimizer(config: TrainingConfig, fit_images: int) -> keras.optimizers.Optimizer:
    learning_rate = config.learning_rate
    if config.learning_rate_schedule == "cosine":
        steps = config.epochs * math.ceil(fit_images / config.batch_size)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=steps, alpha=0.01)
    return keras.optimizers.Adam(learning_rate)


def fit(model: keras.Model, splits: TrainingSplits, data: LabeledData, config: TrainingConfig,
        weights: dict[int, float] | None, progress: bool) -> tuple[dict[str, list[float]], int]:
    """Fit ``model`` on ``splits.fit_*`` with early stopping on validation AUC.

    ``weights``: Keras ``class_weight`` (None: unweighted). The best epoch's weights
    are kept. Returns (per-epoch history, 1-based best epoch).
    """
    num_classes = len(data.classes)
    trainer = training_model(model, config)
    trainer.compile(
        optimizer=_optimizer(config, len(splits.fit_x)),
        loss=keras.losses.CategoricalCrossentropy(),
        # multi_label AUC averages one-vs-rest AUCs; for two classes that is exactly
        # the AUC of the positive class's score.
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc")])
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=config.early_stopping_patience,
        restore_best_weights=True)
    result = trainer.fit(
        splits.fit_x, keras.utils.to_categorical(splits.fit_y, num_classes),
        validation_data=(data.val_x, keras.utils.to_categorical(data.val_y, num_classes)),
        epochs=config.epochs, batch_size=config.batch_size, shuffle=True,
        class_weight=weights,
        callbacks=[early_stopping], verbose=_verbosity(progress))
    history = {key: [float(v) for v in values] for key, values in result.history.items()}
    best_epoch = int(np.argmax(history["val_auc"])) + 1
    return history, best_epoch


def _verbosity(progress: bool) -> int:
    """Keras' live progress bar on a terminal, one line per epoch in logs and CI."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def predict_positive(model: keras.Model, images: np.ndarray, positive_index: int) -> np.ndarray:
    """The positive class's probability per image, float32 (N,)."""
    return np.asarray(model.predict(images, batch_size=256, verbose=0))[:, positive_index]


# About this many calibration negatives should lie above the urgent threshold for its
# specificity to be measured rather than guessed: 5 / (1 - target) negatives at least.
URGENT_NEGATIVES_ABOVE = 5


def calibrate(model: keras.Model, splits: TrainingSplits, positive_index: int,
              positive_class: str, config: TrainingConfig) -> Calibration:
    """The operating threshold for ``config.calibration_target`` and the urgent threshold
    for ``config.urgent_specificity``, on the calibration split.

    Raises ValueError when the split lacks a class altogether. Too few images for the
    thresholds to mean much are recorded (``too_few``, the urgent threshold's
    ``reason``), not hidden: the gate refuses such a version.
    """
    if not len(splits.calibration_x):
        return Calibration(config.threshold, None)
    labels = (splits.calibration_y == positive_index).astype(np.int64)
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"the calibration split ({len(labels)} images) lacks a class; add "
                         "images, raise calibration_fraction, or set it to 0 to keep the "
                         "configured thresholds")
    problem = too_few(labels, config.min_calibration_per_class, "calibration")
    if problem:
        logger.warning("%s: the thresholds will not mean much and the gate will refuse this "
                       "version", problem)
    scores = predict_positive(model, splits.calibration_x, positive_index)
    fitted = fitted_sensitivity(int(labels.sum()), config)
    threshold = operating_threshold(labels, scores, fitted)
    result = evaluate_scores(labels, scores, threshold, positive_class)
    logger.info("threshold %.4f reaches sensitivity %.4f (fitted to %.3f for a target of %.2f) "
                "on %d calibration images", threshold, result.sensitivity, fitted,
                config.target_sensitivity, result.n)
    if config.urgent_specificity is None:
        return Calibration(threshold, result, too_few=problem, fitted=fitted)
    negatives = int((labels == 0).sum())
    needed = math.ceil(URGENT_NEGATIVES_ABOVE / (1.0 - config.urgent_specificity) - 1e-9)
    if negatives < needed:
        reason = (f"the calibration split holds {negatives} other images; specificity "
                  f"{config.urgent_specificity} needs at least {needed}, so the configured "
                  f"urgent threshold {config.urgent_threshold} is kept")
        logger.warning(reason)
        return Calibration(threshold, result, fitted=fitted, urgent={
            "split": CALIBRATION, "target_specificity": config.urgent_specificity,
            "threshold": None, "negatives": negatives, "min_negatives": needed,
            "reason": reason}, too_few=problem)
    urgent = max(threshold, threshold_for_specificity(labels, scores, config.urgent_specificity))
    urgent_result = evaluate_scores(labels, scores, urgent, positive_class)
    logger.info("urgent threshold %.4f: specificity %.4f, sensitivity %.4f on %d calibration "
                "images", urgent, urgent_result.specificity, urgent_result.sensitivity,
                urgent_result.n)
    return Calibration(threshold, result, urgent, {
        "split": CALIBRATION, "target_specificity": config.urgent_specificity,
        "threshold": urgent, "specificity": urgent_result.specificity,
        "sensitivity": urgent_result.sensitivity, "negatives": negatives,
        "min_negatives": needed}, too_few=problem, fitted=fitted)


def fitted_sensitivity(positives: int, config: TrainingConfig) -> float:
    """The calibration sensitivity the threshold is fitted to: target plus margin, raised
    until its exact lower confidence bound (the one the gate applies) reaches the target.

    On a large calibration split the margin decides; on a small one the bound does, so
    a threshold read off few positives is set more cautiously rather than by luck.
    """
    required = config.calibration_target
    for found in range(math.ceil(required * positives - 1e-9), positives + 1):
        if sensitivity_lower_bound(found, positives) >= config.target_sensitivity:
            return max(required, found / positives)
    return 1.0


def holdout_result(model: keras.Model, splits: TrainingSplits, positive_index: int,
                   positive_class: str, calibration: Calibration) -> EvaluationResult | None:
    """The holdout at the operating threshold, for the record (the gate judges it anew),
    or None when there is no holdout or it lacks a class."""
    labels = (splits.holdout_y == positive_index).astype(np.int64)
    if len(set(labels.tolist())) < 2:
        return None
    scores = predict_positive(model, splits.holdout_x, positive_index)
    return evaluate_scores(labels, scores, calibration.threshold, positive_class)


def training_metrics(validation: EvaluationResult, calibration: Calibration,
                     config: TrainingConfig, holdout: EvaluationResult | None = None) -> dict:
    """metadata ``metrics``, one entry per split: ``validation`` (early stopping; its
    figures are optimistic, it chose the epoch), ``calibration`` (the thresholds were
    set on it) and ``holdout`` (seen by neither: the figure to believe).

    ``val_auc`` and ``val_accuracy`` (at 0.5) stay top-level for existing readers.
    """
    return {"val_auc": validation.auc, "val_accuracy": validation.accuracy_at_0_5,
            "validation": validation.to_dict(),
            "calibration": None if calibration.result is None else {
                **calibration.result.to_dict(),
                "fitted_sensitivity": calibration.fitted,
                "min_per_class": config.min_calibration_per_class,
                "too_few": calibration.too_few,
                "urgent": calibration.urgent},
            "holdout": None if holdout is None else holdout.to_dict(),
            "target_sensitivity": None if calibration.result is None
            else config.target_sensitivity}


def write_model_files(model: keras.Model, staging: Path, history: dict) -> None:
    """The served model in every form the registry keeps, plus the training history.

    The SavedModel goes first: ``export`` writes ``saved_model.pb``, ``variables/`` and
    ``assets/`` straight into ``staging``, which becomes ``<registry>/<name>/<N>/``.
    """
    export_saved_model(model, staging)
    model.save(staging / MODEL_FILE)
    (staging / ARCHITECTURE_FILE).write_text(model.to_json())
    model.save_weights(staging / WEIGHTS_FILE)
    (staging / HISTORY_FILE).write_text(json.dumps(history, indent=2))


def export_saved_model(model: keras.Model, directory: Path) -> bool:
    """A TensorFlow SavedModel with a ``serve`` endpoint, for TF Serving; False if skipped.

    Keras exports SavedModels from the TensorFlow and JAX backends only.
    """
    if keras.backend.backend() not in ("tensorflow", "jax"):
        logger.warning("no SavedModel export on the %s backend", keras.backend.backend())
        return False
    model.export(directory, format="tf_saved_model", verbose=False)
    return True


def metadata_document(config: TrainingConfig, classes: Sequence[str], positive_class: str,
                      metrics: dict, data_fingerprint: str, training: dict,
                      calibration: Calibration) -> dict:
    """metadata.json for the new version (the registry adds the version number).

    ``calibration``: the operating and urgent thresholds (the configured ones where it
    chose none); the urgent threshold is never below the operating one.
    """
    threshold = calibration.threshold
    urgent = (config.urgent_threshold if calibration.urgent_threshold is None
              else calibration.urgent_threshold)
    # from_dict normalizes case and spacing ("cr" -> "CR"), as serving will read them.
    applicability = Applicability.from_dict({"modalities": config.modalities,
                                             "body_parts": config.body_parts})
    return {
        "schema_version": 1,
        "name": config.model_name,
        "classes": list(classes),
        "positive_class": positive_class,
        "threshold": threshold,
        "urgent_threshold": max(urgent, threshold),
        "preprocessing": config.preprocessing.to_dict(),
        "applicability": applicability.to_dict(),
        "created_at": utc_now(),
        "description": f"{config.architecture} trained on {Path(config.data).name}",
        "metrics": metrics,
        "data_fingerprint": data_fingerprint,
        "data_roles": config.data_roles.to_dict(),
        "training": training,
        "code_version": code_version(),
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }


def promote(registry: ModelRegistry, record: ModelMetadata, policy: str) -> bool:
    """Point production at ``record`` when ``policy`` says so; True when it moved."""
    if policy == "always" or (policy == "if_none" and registry.production(record.name) is None):
        registry.promote(record.name, record.version, reason=f"trained (promote={policy})")
        logger.info("production of %s is now version %s", record.name, record.version)
        return True
    return False


def code_version() -> str:
    """The git commit of this checkout, or "unknown" outside git (an installed wheel)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"

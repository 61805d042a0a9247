"""Train a classifier on labeled images and register it as the next model version.

``train_and_register(TrainingConfig(...))`` loads the data through the serving path's
decoding and preprocessing, fits a Keras model with early stopping, measures it on
the validation split, and registers ``model.keras`` with its metadata (preprocessing,
classes, thresholds, applicability, metrics, data fingerprint, code version). The
production pointer moves only as ``promote`` says.

Runs on Keras' TensorFlow backend by default; the saved model loads on any backend.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from batch_training.datasets import LabeledData, load_labeled_data
from batch_training.models import build_model
from streaming.imaging.preprocessing import PreprocessingSpec
from streaming.modeling.metadata import Applicability, ModelMetadata, utc_now
from streaming.modeling.registry import MODEL_FILE, PRODUCTION, ModelRegistry

logger = logging.getLogger(__name__)

PROMOTE_CHOICES = ("always", "if_none", "never")
HISTORY_FILE = "history.json"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything one training run needs; saved into the model's metadata as is.

    ``data``: an .npz file or a train/validation folder (see ``batch_training.datasets``).
    ``positive_class``: the finding the model reports; default the last class.
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
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    early_stopping_patience: int = 5
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
        if not 0.0 <= self.threshold <= self.urgent_threshold <= 1.0:
            raise ValueError("need 0 <= threshold <= urgent_threshold <= 1, got "
                             f"{self.threshold} and {self.urgent_threshold}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return PreprocessingSpec(self.height, self.width, self.channels,
                                 tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


def train_and_register(config: TrainingConfig, progress: bool = True) -> ModelMetadata:
    """Train one model per ``config`` and register it; returns the registered metadata."""
    started = time.monotonic()
    data = load_labeled_data(config.data, config.preprocessing, config.class_names)
    positive_class = config.positive_class or data.classes[-1]
    if positive_class not in data.classes:
        raise ValueError(f"positive_class {positive_class!r} is not one of the classes "
                         f"{', '.join(data.classes)}")
    logger.info("training %s on %d images (%d for validation, %d files skipped), classes %s",
                config.architecture, len(data.train_x), len(data.val_x), data.skipped,
                ", ".join(data.classes))

    keras.utils.set_random_seed(config.seed)
    model = build_model(config.architecture, config.preprocessing.input_shape, len(data.classes))
    history, best_epoch = fit(model, data, config, progress)
    metrics = evaluate(model, data)
    logger.info("validation AUC %.4f, accuracy %.4f", metrics["val_auc"], metrics["val_accuracy"])

    training = {"config": config.to_dict(), "epochs_trained": len(history["loss"]),
                "best_epoch": best_epoch, "train_images": len(data.train_x),
                "val_images": len(data.val_x), "skipped_files": data.skipped,
                "wall_seconds": round(time.monotonic() - started, 1)}
    document = metadata_document(config, data.classes, positive_class, metrics,
                                 data.fingerprint, training)
    registry = ModelRegistry(config.model_registry)
    with tempfile.TemporaryDirectory(prefix="medimg-train-") as staging:
        model.save(Path(staging) / MODEL_FILE)
        (Path(staging) / HISTORY_FILE).write_text(json.dumps(history, indent=2))
        record = registry.register(staging, document)
    logger.info("registered %s", record.model_id)
    promote(registry, record, config.promote)
    return record


def fit(model: keras.Model, data: LabeledData, config: TrainingConfig,
        progress: bool) -> tuple[dict[str, list[float]], int]:
    """Compile and fit with early stopping on validation loss, keeping the best weights.

    Validation loss rather than AUC: AUC ignores calibration, and the serving path
    compares the positive score with a fixed threshold. Returns (per-epoch history,
    1-based best epoch).
    """
    num_classes = len(data.classes)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        # multi_label AUC averages one-vs-rest AUCs; for two classes that is exactly
        # the AUC of the positive class's score.
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc")])
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.early_stopping_patience,
        restore_best_weights=True)
    result = model.fit(
        data.train_x, keras.utils.to_categorical(data.train_y, num_classes),
        validation_data=(data.val_x, keras.utils.to_categorical(data.val_y, num_classes)),
        epochs=config.epochs, batch_size=config.batch_size, shuffle=True,
        callbacks=[early_stopping], verbose=_verbosity(progress))
    history = {key: [float(v) for v in values] for key, values in result.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    return history, best_epoch


def _verbosity(progress: bool) -> int:
    """Keras' live progress bar on a terminal, one line per epoch in logs and CI."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def evaluate(model: keras.Model, data: LabeledData) -> dict[str, float]:
    """Validation loss, AUC (of the positive class for two classes) and accuracy."""
    results = model.evaluate(
        data.val_x, keras.utils.to_categorical(data.val_y, len(data.classes)),
        batch_size=256, verbose=0, return_dict=True)
    return {"val_auc": float(results["auc"]), "val_accuracy": float(results["accuracy"]),
            "val_loss": float(results["loss"])}


def metadata_document(config: TrainingConfig, classes: Sequence[str], positive_class: str,
                      metrics: dict, data_fingerprint: str, training: dict) -> dict:
    """metadata.json for the new version (the registry adds the version number)."""
    # from_dict normalizes case and spacing ("cr" -> "CR"), as serving will read them.
    applicability = Applicability.from_dict({"modalities": config.modalities,
                                             "body_parts": config.body_parts})
    return {
        "schema_version": 1,
        "name": config.model_name,
        "classes": list(classes),
        "positive_class": positive_class,
        "threshold": config.threshold,
        "urgent_threshold": config.urgent_threshold,
        "preprocessing": config.preprocessing.to_dict(),
        "applicability": applicability.to_dict(),
        "created_at": utc_now(),
        "description": f"{config.architecture} trained on {Path(config.data).name}",
        "metrics": metrics,
        "data_fingerprint": data_fingerprint,
        "training": training,
        "code_version": code_version(),
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }


def promote(registry: ModelRegistry, record: ModelMetadata, policy: str) -> bool:
    """Point production at ``record`` when ``policy`` says so; True when it moved."""
    if policy == "always" or (policy == "if_none" and registry.production(record.name) is None):
        registry.set_pointer(record.name, record.version, PRODUCTION,
                             reason=f"trained (promote={policy})")
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

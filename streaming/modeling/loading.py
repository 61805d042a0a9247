"""The one way a model is loaded, for serving, evaluation and the promotion gate.

Works on any Keras 3 backend: TensorFlow locally, JAX on GPU workers that have
no TensorFlow. Keras is imported only here and only when a model is loaded, so
the rest of the streaming package imports without it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from streaming.modeling.metadata import ModelMetadata
from streaming.modeling.registry import ModelRegistry, is_remote, local_path


class ModelRefused(RuntimeError):
    """A model version that must not serve: unloadable, or at odds with its metadata."""


@dataclasses.dataclass(eq=False)
class LoadedModel:
    """A Keras model together with the metadata that says how to feed and read it."""
    metadata: ModelMetadata
    keras_model: Any

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (batch, len(classes)), as float32 numpy."""
        outputs = self.keras_model.predict_on_batch(batch)
        return np.asarray(outputs, dtype=np.float32)


def load_model(registry: ModelRegistry, name: str, version: str) -> LoadedModel:
    """Load one registered version and check that it agrees with its own metadata.

    Raises ModelRefused for a model that must not serve; registry errors pass through.
    """
    metadata = registry.metadata(name, version)
    try:
        keras_model = _load_keras(registry.model_uri(name, version))
    except Exception as error:  # noqa: BLE001 - any failure to load means: do not serve it
        raise ModelRefused(f"{metadata.model_id} cannot be loaded "
                           f"({type(error).__name__})") from error
    check_agrees_with_metadata(keras_model, metadata)
    loaded = LoadedModel(metadata=metadata, keras_model=keras_model)
    check_outputs(loaded)
    return loaded


def _load_keras(uri: str):
    import keras  # noqa: PLC0415 - heavy, and backend-specific: load only when serving

    if not is_remote(uri):
        path = local_path(uri)
        return keras.saving.load_model(path, compile=False)
    # Keras reads local files only; stage remote models (gs://...) in a temporary folder.
    with tempfile.TemporaryDirectory(prefix="medimg-model-") as staging:
        local = os.path.join(staging, os.path.basename(uri))
        with FileSystems.open(uri) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return keras.saving.load_model(local, compile=False)


def check_agrees_with_metadata(keras_model, metadata: ModelMetadata) -> None:
    """Refuse a model whose tensors contradict its metadata (input shape, class count)."""
    input_shape = tuple(keras_model.input_shape[1:])
    expected = metadata.preprocessing.input_shape
    if input_shape != expected:
        raise ModelRefused(
            f"{metadata.model_id}: model input shape {input_shape} does not match the "
            f"metadata's preprocessing {expected}")
    output_shape = tuple(keras_model.output_shape[1:])
    if output_shape != (len(metadata.classes),):
        raise ModelRefused(
            f"{metadata.model_id}: model outputs {output_shape} but the metadata names "
            f"{len(metadata.classes)} classes")


def check_outputs(loaded: LoadedModel) -> None:
    """Refuse a model whose output on a plain input is not one probability per class."""
    probe = np.full((2, *loaded.metadata.preprocessing.input_shape), 0.5, dtype=np.float32)
    try:
        outputs = loaded.predict(probe)
    except Exception as error:  # noqa: BLE001
        raise ModelRefused(f"{loaded.metadata.model_id} fails on a probe input "
                           f"({type(error).__name__})") from error
    if outputs.shape != (2, len(loaded.metadata.classes)):
        raise ModelRefused(f"{loaded.metadata.model_id} returns shape {outputs.shape} for 2 "
                           f"images; expected (2, {len(loaded.metadata.classes)})")
    if not np.all(np.isfinite(outputs)) or np.any(outputs < 0) or np.any(outputs > 1):
        raise ModelRefused(f"{loaded.metadata.model_id} returns scores that are not "
                           "probabilities (NaN, infinite or outside [0, 1]) on a probe input")

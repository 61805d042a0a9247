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
from streaming.modeling.registry import ModelRegistry


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
    """Load one registered version and check that it agrees with its own metadata."""
    metadata = registry.metadata(name, version)
    keras_model = _load_keras(registry.model_uri(name, version))
    check_agrees_with_metadata(keras_model, metadata)
    return LoadedModel(metadata=metadata, keras_model=keras_model)


def _load_keras(uri: str):
    import keras  # noqa: PLC0415 - heavy, and backend-specific: load only when serving

    if "://" not in uri or uri.startswith("file://"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
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

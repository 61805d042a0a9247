"""Fixtures shared by the unit tests: a small model registry built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from streaming.modeling.metadata import utc_now
from streaming.modeling.registry import ModelRegistry

MODEL_NAME = "test-cnn"


def metadata_document(**overrides) -> dict:
    """A valid metadata.json for a 28x28 grayscale two-class chest X-ray model."""
    document = {
        "schema_version": 1, "name": MODEL_NAME, "classes": ["normal", "pneumonia"],
        "positive_class": "pneumonia", "threshold": 0.5, "urgent_threshold": 0.9,
        "preprocessing": {"height": 28, "width": 28, "channels": 1},
        "applicability": {"modalities": ["CR", "DX", "OT"], "body_parts": ["CHEST"]},
        "created_at": utc_now(),
    }
    document.update(overrides)
    return document


def build_small_model(input_shape=(28, 28, 1), classes=2, seed=0, activation="softmax"):
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation=activation),
    ])


def register(registry: ModelRegistry, staging: Path, model, **metadata_overrides):
    staging.mkdir(parents=True, exist_ok=True)
    model.save(staging / "model.keras")
    return registry.register(staging, metadata_document(**metadata_overrides))


@pytest.fixture(scope="session")
def small_registry(tmp_path_factory) -> ModelRegistry:
    """A registry holding one production model (version 1) of MODEL_NAME."""
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(str(root))
    record = register(registry, tmp_path_factory.mktemp("staging"), build_small_model())
    registry.set_pointer(MODEL_NAME, record.version)
    return registry


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

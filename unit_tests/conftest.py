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


def write_phantom(path: Path, rng: np.random.Generator, lesion: bool, index: int) -> None:
    """A 48x48 chest phantom: PNG for a .png path, else RLE DICOM (MONOCHROME1)."""
    from PIL import Image  # noqa: PLC0415

    from streaming.local import phantoms  # noqa: PLC0415
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = phantoms.render_chest_phantom(rng, 48, lesion=lesion)
    if path.suffix == ".png":
        Image.fromarray(np.uint8(pixels * 255)).save(path)
    else:
        phantoms.write_dicom(path, pixels, modality="CR", study_uid=f"2.25.{index + 1}",
                             series_uid="2.25.99", sop_uid=f"2.25.{index + 1}{int(lesion)}",
                             transfer_syntax="rle", photometric="MONOCHROME1")


def phantom_folder(root: Path, broken: bool = False) -> Path:
    """train/ and validation/ with normal and lesion, PNG and DICOM files mixed, a text
    file to ignore, and with ``broken`` one file that is not DICOM at all."""
    from streaming.local import phantoms  # noqa: PLC0415
    rng = np.random.default_rng(4)
    for split, count in (("train", 3), ("validation", 2)):
        for label in phantoms.PHANTOM_CLASSES:
            for index in range(count):
                suffix = ".png" if index % 2 else ".dcm"
                write_phantom(root / split / label / f"{index}{suffix}", rng,
                              label == "lesion", index)
    (root / "train" / "normal" / "notes.txt").write_text("not an image: ignored")
    if broken:
        (root / "train" / "lesion" / "broken.dcm").write_bytes(b"not a dicom file")
    return root


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

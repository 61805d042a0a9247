"""Names and types every dataset reader and writer shares: splits, labeled files, labeled data.

Plain values only (numpy, no Beam or TensorFlow), so that ``datasets`` (reading
sources), ``shards`` (reading preprocessed output) and ``preprocess`` (writing it)
can all import them without importing each other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TRAIN_SPLIT = "train"
VALIDATION_SPLITS = ("validation", "val")
TEST_SPLIT = "test"
# Split names a labels CSV may give; "val" is read as "validation".
CSV_SPLITS = {"train": TRAIN_SPLIT, "validation": "validation", "val": "validation",
              "test": TEST_SPLIT}
DEFAULT_VALIDATION_FRACTION = 0.1
# What batch_training.preprocess writes beside its shards (kept here so that
# recognising an output folder does not import Beam and TensorFlow).
PREPROCESSED_MANIFEST = "manifest.json"
PREPROCESSED_FORMAT = "medimg.preprocessed-examples"


@dataclasses.dataclass(eq=False)
class LabeledData:
    """Preprocessed images and integer labels for training and validation.

    ``train_x`` / ``val_x``: float32 (N, height, width, channels), the model's input.
    ``train_y`` / ``val_y``: int64 (N,), indices into ``classes``.
    ``fingerprint``: "sha256:<hex>" over the input bytes. ``skipped``: files that
    could not be decoded and were left out (always 0 for an npz). ``train_keys``: each
    training image's role key (``batch_training.roles.role_key``), which decides
    whether it fits, calibrates or is held out for the gate.
    """
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    classes: tuple[str, ...]
    fingerprint: str
    skipped: int = 0
    train_keys: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class LabeledFile:
    """One image file of a dataset and its label.

    ``location``: where to read it (a local path or a URI such as gs://...).
    ``key``: its name in fingerprints, shards and rejections: the path relative to
    the source folder (posix), or the location itself for a file outside it.
    ``label``: index into the listing's classes. ``split``: train, validation
    (or val, as the folder names it) or test. ``group``: the patient or study the
    image belongs to (a labels CSV's ``group`` column), so that no group is split
    between fitting and judging; None when the source names none.
    """
    location: str
    key: str
    label: int
    split: str
    group: str | None = None

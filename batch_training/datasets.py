"""Labeled images for training, read through the same functions the streaming job uses.

Every file goes through ``decode_image_bytes`` and every image through ``preprocess``,
so training sees exactly what serving will feed the model. Two sources:

- a MedMNIST-style ``.npz`` (``load_npz``): ``<split>_images`` / ``<split>_labels``;
- a folder (``load_folder``): ``<root>/train/<class>/*`` and ``<root>/validation/<class>/*``
  (or ``val``), PNG, JPEG or DICOM files.

Each result carries a fingerprint of the input bytes, so a model can be traced to
its data. Everything is held in memory: fine for the datasets at hand.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.preprocessing import PreprocessingSpec, preprocess
from streaming.imaging.types import ImageLimits, ImageRejected

logger = logging.getLogger(__name__)

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".dcm": "application/dicom"}
TRAIN_SPLIT = "train"
VALIDATION_SPLITS = ("validation", "val")


@dataclasses.dataclass(eq=False)
class LabeledData:
    """Preprocessed images and integer labels for training and validation.

    ``train_x`` / ``val_x``: float32 (N, height, width, channels), the model's input.
    ``train_y`` / ``val_y``: int64 (N,), indices into ``classes``.
    ``fingerprint``: "sha256:<hex>" over the input bytes. ``skipped``: files that
    could not be decoded and were left out (always 0 for an npz).
    """
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    classes: tuple[str, ...]
    fingerprint: str
    skipped: int = 0


def load_labeled_data(source: str | Path, spec: PreprocessingSpec,
                      class_names: Sequence[str] | None = None) -> LabeledData:
    """Read ``source``: an ``.npz`` file or a folder with train/validation splits."""
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return load_npz(source, spec, class_names=class_names)
    if source.is_dir():
        return load_folder(source, spec, class_names=class_names)
    raise ValueError(
        f"training data {source} is neither an .npz file nor a folder; pass a MedMNIST-style "
        "npz (train_images, train_labels, val_images, val_labels) or a folder laid out as "
        "<root>/train/<class>/* and <root>/validation/<class>/*")


# -- npz -------------------------------------------------------------------------------

def load_npz(path: str | Path, spec: PreprocessingSpec,
             splits: tuple[str, str] = ("train", "val"),
             class_names: Sequence[str] | None = None) -> LabeledData:
    """Read MedMNIST-style arrays: ``<split>_images`` and ``<split>_labels`` for each split.

    ``splits``: (training split, validation split) array prefixes. Images are uint8
    (N, H, W) or (N, H, W, 3), scaled by 1/255, or float in [0, 1] taken as is;
    labels are (N,) or (N, 1) integers. Class names come from ``class_names``, else
    from a ``class_names`` array in the file, else ``class_0``, ``class_1``, ...
    """
    path = Path(path)
    train_split, val_split = splits
    with np.load(path, allow_pickle=False) as arrays:
        missing = [f"{split}_{kind}" for split in splits for kind in ("images", "labels")
                   if f"{split}_{kind}" not in arrays]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}; it holds "
                             f"{', '.join(sorted(arrays.files))}")
        train_y = _labels(arrays[f"{train_split}_labels"], f"{path}:{train_split}")
        val_y = _labels(arrays[f"{val_split}_labels"], f"{path}:{val_split}")
        if not train_y.size or not val_y.size:
            raise ValueError(f"{path}: the {train_split} and {val_split} splits must not be empty")
        stored_names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
        classes = _npz_classes(class_names, stored_names, max(train_y.max(), val_y.max()) + 1,
                               path)
        train_x = _preprocess_array(arrays[f"{train_split}_images"], spec, f"{path}:{train_split}")
        val_x = _preprocess_array(arrays[f"{val_split}_images"], spec, f"{path}:{val_split}")
    for name, x, y in (("train", train_x, train_y), ("val", val_x, val_y)):
        if len(x) != len(y):
            raise ValueError(f"{path}: {name} has {len(x)} images but {len(y)} labels")
    # The whole file's sha256, so the fingerprint of a published dataset is its checksum.
    return LabeledData(train_x, train_y, val_x, val_y, classes,
                       fingerprint=f"sha256:{_file_sha256(path).hexdigest()}")


def _labels(labels: np.ndarray, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{where}: expected one label per image ((N,) or (N, 1)), got shape "
                         f"{labels.shape}; multi-label data is not supported")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"{where}: labels must be non-negative integers")
    return labels.astype(np.int64)


def _npz_classes(requested: Sequence[str] | None, stored: list[str] | None,
                 label_count: int, path: Path) -> tuple[str, ...]:
    if requested is not None and stored is not None and list(requested) != stored:
        raise ValueError(f"class_names {list(requested)} contradict the names stored in "
                         f"{path}: {stored}")
    classes = tuple(requested or stored or (f"class_{i}" for i in range(max(label_count, 2))))
    if label_count > len(classes):
        raise ValueError(f"{path}: labels go up to {label_count - 1} but only {len(classes)} "
                         f"class names are given ({', '.join(classes)})")
    return classes


def _preprocess_array(images: np.ndarray, spec: PreprocessingSpec, where: str) -> np.ndarray:
    """uint8 or [0, 1] float images -> float32 (N, height, width, channels) via ``preprocess``."""
    if images.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ValueError(f"{where}: float images must lie in [0, 1]")
        scale = 1.0
    else:
        raise ValueError(f"{where}: images must be uint8 or float in [0, 1], got {images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{where}: expected images (N, H, W) or (N, H, W, 3), got "
                         f"{images.shape}")
    out = np.empty((len(images), *spec.input_shape), dtype=np.float32)
    for index, image in enumerate(images):
        out[index] = preprocess(image.astype(np.float32) * scale, spec)
    return out


# -- folder ----------------------------------------------------------------------------

def load_folder(root: str | Path, spec: PreprocessingSpec,
                class_names: Sequence[str] | None = None,
                limits: ImageLimits = ImageLimits()) -> LabeledData:
    """Read ``<root>/train/<class>/*`` and ``<root>/{validation|val}/<class>/*``.

    Files: .png, .jpg/.jpeg (Pillow) and .dcm (pydicom), all through
    ``decode_image_bytes``; other files are ignored. Classes are the sorted folder
    names (or ``class_names``, which fixes their order) and must be the same in both
    splits. Files that fail to decode are skipped, logged, and counted in ``skipped``.
    """
    root = Path(root)
    train_dir = root / TRAIN_SPLIT
    val_dirs = [root / name for name in VALIDATION_SPLITS if (root / name).is_dir()]
    if not train_dir.is_dir() or len(val_dirs) != 1:
        raise ValueError(f"{root} must hold a train/ folder and exactly one of "
                         f"{' or '.join(VALIDATION_SPLITS)}/, each with one folder per class")
    classes = _folder_classes(train_dir, val_dirs[0], class_names)
    train_files = _image_files(train_dir, classes)
    val_files = _image_files(val_dirs[0], classes)
    skipped = collections.Counter()
    train_x, train_y, train_used = _decode_files(train_files, spec, limits, skipped)
    val_x, val_y, val_used = _decode_files(val_files, spec, limits, skipped)
    if skipped:
        logger.warning("skipped %d unreadable image files under %s (%s)", sum(skipped.values()),
                       root, ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()))
    if not len(train_x) or not len(val_x):
        raise ValueError(f"{root}: no readable images in the train or validation split")
    return LabeledData(train_x, train_y, val_x, val_y, classes,
                       fingerprint=fingerprint_files(root, train_used + val_used),
                       skipped=sum(skipped.values()))


def _folder_classes(train_dir: Path, val_dir: Path,
                    class_names: Sequence[str] | None) -> tuple[str, ...]:
    found = {split.name: sorted(p.name for p in split.iterdir() if p.is_dir())
             for split in (train_dir, val_dir)}
    if found[train_dir.name] != found[val_dir.name]:
        raise ValueError(f"class folders differ between {train_dir} ({found[train_dir.name]}) "
                         f"and {val_dir} ({found[val_dir.name]}); both splits need the same set")
    classes = tuple(class_names) if class_names is not None else tuple(found[train_dir.name])
    if sorted(classes) != found[train_dir.name]:
        raise ValueError(f"class_names {list(classes)} do not match the class folders "
                         f"{found[train_dir.name]} in {train_dir.parent}")
    if len(classes) < 2:
        raise ValueError(f"{train_dir} needs at least two class folders, found {list(classes)}")
    return classes


def _image_files(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(file, class index) for every image file of a split, in a deterministic order."""
    files = []
    for label, name in enumerate(classes):
        files.extend((path, label) for path in sorted((split_dir / name).rglob("*"))
                     if path.is_file() and path.suffix.lower() in CONTENT_TYPES)
    return files


def _decode_files(files: Sequence[tuple[Path, int]], spec: PreprocessingSpec,
                  limits: ImageLimits, skipped: collections.Counter):
    """Decode and preprocess each file; returns (x, y, files used). Failures go to ``skipped``."""
    x = np.empty((len(files), *spec.input_shape), dtype=np.float32)
    y, used = [], []
    for path, label in files:
        try:
            decoded = decode_image_bytes(path.read_bytes(), CONTENT_TYPES[path.suffix.lower()],
                                         limits)
        except ImageRejected as rejection:
            logger.debug("skipping %s: %s", path, rejection.message)
            skipped[str(rejection.reason.value)] += 1
            continue
        except OSError:
            skipped["unreadable file"] += 1
            continue
        x[len(used)] = preprocess(decoded.pixels, spec)
        y.append(label)
        used.append(path)
    return x[:len(used)], np.asarray(y, dtype=np.int64), used


def _file_sha256(path: Path):
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256")


def fingerprint_files(root: str | Path, paths: Iterable[str | Path]) -> str:
    """"sha256:<hex>" over each file's path relative to ``root`` and its content.

    Sorted by relative path, so the order files were found in does not matter; a
    renamed, added, removed or changed file changes the fingerprint.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for relative in sorted(Path(p).relative_to(root).as_posix() for p in paths):
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(_file_sha256(root / relative).digest())
    return f"sha256:{digest.hexdigest()}"

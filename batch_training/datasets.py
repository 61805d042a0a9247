"""Labeled images for training, read through the same functions the streaming job uses.

Every file goes through ``decode_image_bytes`` and every image through ``preprocess``,
so training sees exactly what serving will feed the model. Sources:

- a MedMNIST-style ``.npz`` (``load_npz``): ``<split>_images`` / ``<split>_labels``;
- a folder (``load_folder``): ``<root>/train/<class>/*`` and ``<root>/validation/<class>/*``
  (or ``val``), PNG, JPEG or DICOM files;
- a folder of files with a labels CSV (``load_labels_csv``): columns ``path,label[,split]``;
- the output of ``batch_training.preprocess`` (a folder with its ``manifest.json``):
  TFRecord shards already preprocessed, read back by ``load_shards``.

Each result carries a fingerprint of the input bytes, so a model can be traced to
its data; ``fingerprint_source`` computes the same value without decoding anything.
Everything is held in memory: fine for the datasets at hand.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import urllib.parse
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.preprocessing import PreprocessingSpec, preprocess
from streaming.imaging.types import DecodedImage, ImageLimits, ImageRejected
from batch_training.labeled import (CSV_SPLITS, PREPROCESSED_FORMAT, PREPROCESSED_MANIFEST,  # noqa: F401
                                    DEFAULT_VALIDATION_FRACTION, TEST_SPLIT, TRAIN_SPLIT,
                                    VALIDATION_SPLITS, LabeledData,
                                    LabeledFile)
from batch_training.roles import array_sha256, role_key
from streaming.contracts.reasons import Reason

logger = logging.getLogger(__name__)

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".dcm": "application/dicom"}


@dataclasses.dataclass(frozen=True)
class LabeledFiles:
    """The files of a folder or labels-CSV source, before anything is decoded."""
    classes: tuple[str, ...]
    files: tuple[LabeledFile, ...]
    fingerprint: str

    def split(self, name: str) -> list[LabeledFile]:
        return [file for file in self.files if file.split == name]


def load_labeled_data(source: str | Path, spec: PreprocessingSpec,
                      class_names: Sequence[str] | None = None, *,
                      labels_csv: str | Path | None = None,
                      validation_fraction: float = DEFAULT_VALIDATION_FRACTION) -> LabeledData:
    """Read ``source``: an ``.npz`` file, a folder with train/validation splits, a
    folder of files labeled by ``labels_csv``, or a ``batch_training.preprocess`` output.

    ``validation_fraction`` only matters for CSV rows without a split (see
    ``list_labels_csv``).
    """
    if labels_csv is not None:
        return load_labels_csv(source, labels_csv, spec, class_names=class_names,
                               validation_fraction=validation_fraction)
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return load_npz(source, spec, class_names=class_names)
    if is_preprocessed_output(source):
        _check_preprocessed_spec(source, spec)

        return _checked_classes(load_shards(source), class_names, source)
    if source.is_dir():
        return load_folder(source, spec, class_names=class_names)
    raise ValueError(
        f"training data {source} is neither an .npz file nor a folder; pass a MedMNIST-style "
        "npz (train_images, train_labels, val_images, val_labels), a folder laid out as "
        "<root>/train/<class>/* and <root>/validation/<class>/*, a folder with a labels CSV, "
        "or the output folder of batch_training.preprocess")


@dataclasses.dataclass(eq=False)
class LabeledSplit:
    """One split of a dataset, preprocessed: images (N, H, W, C), labels (N,) into ``classes``.

    ``keys``: each image's role key (``batch_training.roles``). ``locations``: the file
    each image was read from (None for array rows: an npz or shards).
    """
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    keys: tuple[str, ...] = ()
    locations: tuple[str, ...] | None = None

    def subset(self, rows: np.ndarray) -> "LabeledSplit":
        """The images where ``rows`` (a boolean mask) is true, in order."""
        rows = np.asarray(rows, dtype=bool)
        keys = tuple(k for k, keep in zip(self.keys, rows) if keep)
        locations = (None if self.locations is None
                     else tuple(p for p, keep in zip(self.locations, rows) if keep))
        return LabeledSplit(self.images[rows], self.labels[rows], self.classes, keys, locations)


def load_split(source: str | Path, spec: PreprocessingSpec, split: str,
               class_names: Sequence[str] | None = None, *,
               labels_csv: str | Path | None = None,
               limits: ImageLimits = ImageLimits()) -> LabeledSplit:
    """One split (train, val/validation, test, ...) of any source ``load_labeled_data`` reads.

    For evaluation: an ``.npz``'s ``<split>_images``/``<split>_labels``, a folder's
    ``<split>/<class>/*`` (val and validation name the same split), a labels CSV's
    rows of that split, or a preprocessing output's shards (made with ``spec``).
    Undecodable files are left out and logged. ValueError names what exists.
    """
    wanted = VALIDATION_SPLITS if split in VALIDATION_SPLITS else (split,)
    if labels_csv is not None:
        listing = list_labels_csv(source, labels_csv, class_names)
        return _decode_split(listing, [f for f in listing.files if f.split in wanted], spec,
                             limits, f"{labels_csv} ({split})")
    if str(source).endswith(".npz") and (is_uri(str(source)) or Path(source).is_file()):
        available = list_npz_splits(source, class_names, require_train=False)
        name = next((n for n in wanted if n in available.sizes), None)
        if name is None:
            raise ValueError(f"{source} has no {split!r} split ({split}_images and "
                             f"{split}_labels); its splits are: {', '.join(available.sizes)}")
        images, labels = read_npz_split(source, name)
        return LabeledSplit(_preprocess_array(images, spec, f"{source}:{name}"), labels,
                            available.classes, tuple(role_key(array_sha256(row))
                                                     for row in images))
    source = Path(source)
    if is_preprocessed_output(source):
        _check_preprocessed_spec(source, spec)
        from batch_training.shards import PreprocessingManifest, read_split  # noqa: PLC0415

        manifest = PreprocessingManifest.from_dir(str(source))
        name = next((n for n in wanted if n in manifest.counts), wanted[0])
        examples = read_split(str(source), name, manifest)
        return LabeledSplit(examples.images, examples.labels, tuple(manifest.classes),
                            tuple(shard_role_keys(examples, manifest)))
    if not source.is_dir():
        raise ValueError(f"data {source} is neither an .npz file nor a folder; pass a "
                         "MedMNIST-style npz (<split>_images, <split>_labels), a folder laid "
                         "out as <root>/<split>/<class>/*, a labels CSV, or preprocessed shards")
    split_dir = next((source / n for n in wanted if (source / n).is_dir()), None)
    if split_dir is None:
        existing = sorted(p.name for p in source.iterdir() if p.is_dir())
        raise ValueError(f"{source} has no {split}/ folder; its splits are: "
                         f"{', '.join(existing) or 'none'}")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = tuple(class_names) if class_names is not None else tuple(found)
    if sorted(classes) != found:
        raise ValueError(f"class_names {list(classes)} do not match the class folders {found} "
                         f"in {split_dir}")
    files = [LabeledFile(str(path), path.relative_to(source).as_posix(), label, split_dir.name)
             for path, label in _image_files(split_dir, classes)]
    listing = LabeledFiles(classes, tuple(files), "")
    return _decode_split(listing, files, spec, limits, str(split_dir))


def _decode_split(listing: LabeledFiles, files: Sequence[LabeledFile], spec: PreprocessingSpec,
                  limits: ImageLimits, where: str) -> LabeledSplit:
    skipped = collections.Counter()
    images, labels, keys, read = _decode_files(files, spec, limits, skipped)
    if skipped:
        logger.warning("skipped %d unreadable image files in %s", sum(skipped.values()), where)
    if not len(images):
        raise ValueError(f"{where}: no readable images")
    return LabeledSplit(images, labels, listing.classes, keys, tuple(f.location for f in read))


def fingerprint_source(source: str | Path, labels_csv: str | Path | None = None) -> str:
    """"sha256:<hex>" of a training source, reading its bytes but decoding nothing.

    Equal to the ``fingerprint`` that ``load_labeled_data`` (and so training's
    metadata ``data_fingerprint``) reports for the same source, and to the one a
    preprocessing run records in its manifest; for a preprocessing output folder it
    is the fingerprint of the data it was made from. An npz: the file's sha256. A
    folder: ``fingerprint_files`` over its image files (the undecodable ones
    included). A labels CSV: each row's key, label, declared split and file bytes.
    """
    if labels_csv is not None:
        return list_labels_csv(source, labels_csv).fingerprint
    if is_uri(str(source)):
        if str(source).endswith(".npz"):
            return f"sha256:{_location_sha256(str(source)).hexdigest()}"
        raise ValueError(f"{source}: remote folders are not listed; name their files in a "
                         "labels CSV (labels_csv=...) or copy them to a local folder")
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return f"sha256:{_file_sha256(source).hexdigest()}"
    if is_preprocessed_output(source):
        return _read_json(source / PREPROCESSED_MANIFEST)["fingerprint"]
    if source.is_dir():
        return list_folder(source).fingerprint
    raise ValueError(f"{source} is neither an .npz file nor a folder (for a labels CSV "
                     "pass the folder of images as source and the CSV as labels_csv)")


def is_preprocessed_output(folder: str | Path) -> bool:
    """Whether ``folder`` is an output of ``batch_training.preprocess`` (its manifest says so)."""
    manifest = Path(folder) / PREPROCESSED_MANIFEST
    if not manifest.is_file():
        return False
    try:
        document = _read_json(manifest)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("format") == PREPROCESSED_FORMAT


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({type(error).__name__})") from None


def _check_preprocessed_spec(folder: Path, spec: PreprocessingSpec) -> None:
    manifest = _read_json(folder / PREPROCESSED_MANIFEST)
    stored = PreprocessingSpec.from_dict(manifest["preprocessing"])
    if stored != spec:
        raise ValueError(f"{folder} was preprocessed with {stored.to_dict()}, not the requested "
                         f"{spec.to_dict()}; preprocess the source again with this spec")


def _checked_classes(data: LabeledData, class_names: Sequence[str] | None,
                     source: Path) -> LabeledData:
    if class_names is not None and tuple(class_names) != data.classes:
        raise ValueError(f"class_names {list(class_names)} differ from the classes "
                         f"{list(data.classes)} {source} was preprocessed with; preprocess "
                         "again with these class_names")
    return data


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
        train_keys = tuple(role_key(array_sha256(row)) for row in arrays[f"{train_split}_images"])
    for name, x, y in (("train", train_x, train_y), ("val", val_x, val_y)):
        if len(x) != len(y):
            raise ValueError(f"{path}: {name} has {len(x)} images but {len(y)} labels")
    # The whole file's sha256, so the fingerprint of a published dataset is its checksum.
    return LabeledData(train_x, train_y, val_x, val_y, classes,
                       fingerprint=f"sha256:{_file_sha256(path).hexdigest()}",
                       train_keys=train_keys)


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


@dataclasses.dataclass(frozen=True)
class NpzSplits:
    """What an npz holds, read without touching its images: class names and the
    number of labels of each split present (train, val, test, then any others)."""
    classes: tuple[str, ...]
    sizes: dict[str, int]


_NPZ_SPLIT_ORDER = (TRAIN_SPLIT, "val", "validation", TEST_SPLIT)


def list_npz_splits(location: str | Path, class_names: Sequence[str] | None = None,
                    require_train: bool = True) -> NpzSplits:
    """Every ``<split>_images`` / ``<split>_labels`` pair in an npz (local path or URI).

    ``require_train``: refuse a file without a train split (for training; evaluation
    may read a file holding only a test split)."""
    with open_npz(location) as arrays:
        names = [key[:-len("_images")] for key in arrays.files if key.endswith("_images")
                 and f"{key[:-len('_images')]}_labels" in arrays.files]
        names.sort(key=_npz_split_rank)
        if not names or (require_train and TRAIN_SPLIT not in names):
            raise ValueError(f"{location} lacks train_images and train_labels; it holds "
                             f"{', '.join(sorted(arrays.files))}")
        labels = {name: _labels(arrays[f"{name}_labels"], f"{location}:{name}")
                  for name in names}
        stored_names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    label_count = max(int(y.max()) + 1 if y.size else 0 for y in labels.values())
    classes = _npz_classes(class_names, stored_names, label_count, Path(str(location)))
    return NpzSplits(classes, {name: int(y.size) for name, y in labels.items()})


def read_npz_split(location: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images as stored, int64 labels) of one split of an npz (local path or URI)."""
    with open_npz(location) as arrays:
        images = arrays[f"{split}_images"]
        labels = _labels(arrays[f"{split}_labels"], f"{location}:{split}")
    if len(images) != len(labels):
        raise ValueError(f"{location}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels


def _npz_split_rank(name: str) -> tuple[int, str]:
    order = _NPZ_SPLIT_ORDER.index(name) if name in _NPZ_SPLIT_ORDER else len(_NPZ_SPLIT_ORDER)
    return order, name


def open_npz(location: str | Path):
    """``np.load`` of a local npz, or of a remote one (gs://...) read through Beam's FileSystems."""
    if not is_uri(str(location)):
        return np.load(location, allow_pickle=False)
    # np.load needs a seekable file; a whole npz is held in memory by its readers anyway.
    return np.load(io.BytesIO(_read_location(str(location))), allow_pickle=False)


# -- folder ----------------------------------------------------------------------------

def load_folder(root: str | Path, spec: PreprocessingSpec,
                class_names: Sequence[str] | None = None,
                limits: ImageLimits = ImageLimits()) -> LabeledData:
    """Read ``<root>/train/<class>/*`` and ``<root>/{validation|val}/<class>/*``.

    Files: .png, .jpg/.jpeg (Pillow) and .dcm (pydicom), all through
    ``decode_image_bytes``; other files are ignored. Classes are the sorted folder
    names (or ``class_names``, which fixes their order) and must be the same in both
    splits. Files that fail to decode are skipped, logged, and counted in ``skipped``;
    they still count in the fingerprint (it describes the input, as ``fingerprint_source``).
    """
    return _load_listed(list_folder(root, class_names), spec, limits, root)


def list_folder(root: str | Path, class_names: Sequence[str] | None = None) -> LabeledFiles:
    """The image files of a train/validation folder, labeled by their class folder.

    Order: train then validation, class by class (in ``classes`` order), sorted paths.
    """
    root = Path(root)
    train_dir = root / TRAIN_SPLIT
    val_dirs = [root / name for name in VALIDATION_SPLITS if (root / name).is_dir()]
    if not train_dir.is_dir() or len(val_dirs) != 1:
        raise ValueError(f"{root} must hold a train/ folder and exactly one of "
                         f"{' or '.join(VALIDATION_SPLITS)}/, each with one folder per class")
    classes = _folder_classes(train_dir, val_dirs[0], class_names)
    files = [LabeledFile(str(path), path.relative_to(root).as_posix(), label, split_dir.name)
             for split_dir in (train_dir, val_dirs[0])
             for path, label in _image_files(split_dir, classes)]
    return LabeledFiles(classes, tuple(files),
                        fingerprint_files(root, [file.location for file in files]))


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


# -- labels CSV --------------------------------------------------------------------------

def load_labels_csv(source: str | Path, labels_csv: str | Path, spec: PreprocessingSpec,
                    class_names: Sequence[str] | None = None,
                    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                    limits: ImageLimits = ImageLimits()) -> LabeledData:
    """Read the files ``labels_csv`` lists (see ``list_labels_csv``); rows of the test
    split are left out. Unreadable or undecodable files are skipped and counted."""
    listing = list_labels_csv(source, labels_csv, class_names, validation_fraction)
    return _load_listed(listing, spec, limits, labels_csv)


def list_labels_csv(source: str | Path, labels_csv: str | Path,
                    class_names: Sequence[str] | None = None,
                    validation_fraction: float = DEFAULT_VALIDATION_FRACTION) -> LabeledFiles:
    """The files a labels CSV names, with their labels and splits; decodes nothing.

    The CSV (local or a URI) has a header and the columns ``path``, ``label`` and
    optionally ``split``. ``path``: relative to the CSV's folder, or absolute (a URI
    too). ``label``: a class name; classes are ``class_names`` (which fixes their
    order) or the sorted labels found. ``group`` (optional): the patient or study the
    image belongs to; a group's images share their split and their role (see
    ``batch_training.roles``), and the fingerprint covers the groups named. ``split``: train, validation (or val) or test;
    rows without one go to validation with probability ``validation_fraction``, by a
    hash of their key, so the same file always lands in the same split. Keys are
    paths relative to ``source`` (the folder of the images). The fingerprint covers
    each row's key, label, declared split and file bytes, not ``validation_fraction``
    (a processing parameter, like the preprocessing spec).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    labels_csv = str(labels_csv)
    rows = _labels_csv_rows(labels_csv, str(source))
    found = sorted({row[2] for row in rows})
    classes = tuple(class_names) if class_names is not None else tuple(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{labels_csv} has labels {unknown} that are not among class_names "
                         f"{list(classes)}")
    if len(classes) < 2:
        raise ValueError(f"{labels_csv} needs at least two classes, found {list(classes)}")
    files = tuple(LabeledFile(location, key, classes.index(label),
                              split or _hashed_split(group or key, validation_fraction),
                              group or None)
                  for key, location, label, split, group in rows)
    return LabeledFiles(classes, files, _fingerprint_rows(rows))


def labels_csv_groups(source: str | Path, labels_csv: str | Path) -> dict[str, str]:
    """{file key: group} for the rows of a labels CSV that name a group; reads the CSV only."""
    return {key: group for key, _location, _label, _split, group
            in _labels_csv_rows(str(labels_csv), str(source)) if group}


def source_groups(source: str | Path, labels_csv: str | Path | None,
                  keys: Iterable[str]) -> dict[str, str]:
    """{file key: group} for files of a folder or labels-CSV source: the CSV's group
    where it names one, else the patient or study a DICOM file's header names."""
    named = labels_csv_groups(source, labels_csv) if labels_csv else {}
    locations = ({key: location for key, location, *_ in
                  _labels_csv_rows(str(labels_csv), str(source))} if labels_csv else {})
    groups = {}
    for key in keys:
        if key in named:
            groups[key] = named[key]
            continue
        location = locations.get(key) or _resolve(key, str(source))
        try:
            # The header is at the front; 1 MiB holds it for any real file.
            group = dicom_group(_read_location(location, 1 << 20))
        except OSError:
            group = None
        if group:
            groups[key] = group
    return groups


def dicom_group(data: bytes) -> str | None:
    """The patient (PatientID), else the study (StudyInstanceUID), a DICOM file belongs to,
    as a digest: the identity itself is never kept, logged or written. None for a file
    that is not DICOM or names neither."""
    import pydicom  # noqa: PLC0415 - only sources with files need it

    from streaming.runtime.logs import silence_phi_sources  # noqa: PLC0415
    silence_phi_sources()  # header values must not reach a log through pydicom's warnings
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=False,
                                 specific_tags=["PatientID", "StudyInstanceUID"])
    except Exception:  # noqa: BLE001 - not DICOM, or a header too broken to group by
        return None
    for kind, keyword in (("patient", "PatientID"), ("study", "StudyInstanceUID")):
        value = str(header.get(keyword, "") or "").strip()
        if value:
            return f"dicom-{kind}:{hashlib.sha256(value.encode('utf-8')).hexdigest()}"
    return None


def _labels_csv_rows(labels_csv: str, source: str) -> list[tuple[str, str, str, str, str]]:
    """(key, location, label, declared split or "", group or "") per row, in file order."""
    try:
        text = _read_location(labels_csv).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the labels CSV {labels_csv} ({type(error).__name__}); "
                         "it must be UTF-8 text with a path,label[,split] header") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [name.strip().lower() for name in reader.fieldnames or ()]
    if "path" not in columns or "label" not in columns:
        raise ValueError(f"{labels_csv} needs a header with the columns path and label "
                         f"(and optionally split); found {columns}")
    reader.fieldnames = columns
    base = _parent(labels_csv)
    rows, seen = [], {}
    for line, row in enumerate(reader, start=2):
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        declared = (row.get("split") or "").strip().lower()
        if not path or not label:
            raise ValueError(f"{labels_csv} line {line}: path and label must not be empty")
        if declared and declared not in CSV_SPLITS:
            raise ValueError(f"{labels_csv} line {line}: split must be one of "
                             f"{', '.join(CSV_SPLITS)} or empty")
        location = _resolve(path, base)
        key = _key(location, source)
        if key in seen:
            raise ValueError(f"{labels_csv} line {line} names the same file as line {seen[key]}")
        seen[key] = line
        group = (row.get("group") or "").strip()
        rows.append((key, location, label, CSV_SPLITS.get(declared, ""), group))
    if not rows:
        raise ValueError(f"{labels_csv} lists no files")
    return rows


def _hashed_split(key: str, validation_fraction: float) -> str:
    """train or validation from the key's sha256: stable across runs and machines."""
    draw = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return "validation" if draw < validation_fraction else TRAIN_SPLIT


def _fingerprint_rows(rows: Sequence[tuple[str, str, str, str, str]]) -> str:
    digest = hashlib.sha256()
    for key, location, label, split, group in sorted(rows):
        # A group is hashed only when named, so CSVs without groups keep their fingerprints.
        fields = (key, label, split, group) if group else (key, label, split)
        digest.update("\0".join(fields).encode("utf-8") + b"\0")
        digest.update(_location_digest(location))
    return f"sha256:{digest.hexdigest()}"


# -- decoding listed files ------------------------------------------------------------------

def _load_listed(listing: LabeledFiles, spec: PreprocessingSpec, limits: ImageLimits,
                 where) -> LabeledData:
    """Decode the train and validation files of a listing into a ``LabeledData``."""
    val_splits = {file.split for file in listing.files} & set(VALIDATION_SPLITS)
    if len(val_splits) > 1:
        raise ValueError(f"{where} has both validation and val files; use one name")
    skipped = collections.Counter()
    train_x, train_y, train_keys, _ = _decode_files(listing.split(TRAIN_SPLIT), spec, limits,
                                                    skipped)
    val_x, val_y, _, _ = _decode_files(listing.split(next(iter(val_splits), "validation")),
                                       spec, limits, skipped)
    if skipped:
        logger.warning("skipped %d unreadable image files under %s (%s)", sum(skipped.values()),
                       where, ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()))
    if not len(train_x) or not len(val_x):
        raise ValueError(f"{where}: no readable images in the train or validation split")
    return LabeledData(train_x, train_y, val_x, val_y, listing.classes,
                       fingerprint=listing.fingerprint, skipped=sum(skipped.values()),
                       train_keys=train_keys)


def _decode_files(files: Sequence[LabeledFile], spec: PreprocessingSpec,
                  limits: ImageLimits, skipped: collections.Counter):
    """Decode and preprocess each file; returns (x, y, role keys, the files read).

    Failures are counted in ``skipped``."""
    x = np.empty((len(files), *spec.input_shape), dtype=np.float32)
    y, keys, read = [], [], []
    for file in files:
        try:
            data = read_input_bytes(file.location, limits.max_file_bytes)
            decoded = decode_input(data, file.location, limits)
        except ImageRejected as rejection:
            logger.debug("skipping %s: %s", file.key, rejection.message)
            skipped[str(rejection.reason.value)] += 1
            continue
        x[len(y)] = preprocess(decoded.pixels, spec)
        y.append(file.label)
        keys.append(role_key(hashlib.sha256(data).hexdigest(), file.group or dicom_group(data)))
        read.append(file)
    return x[:len(y)], np.asarray(y, dtype=np.int64), tuple(keys), read


def decode_input(data: bytes, location: str, limits: ImageLimits) -> DecodedImage:
    """``decode_image_bytes`` for a training file; ``ImageRejected`` for any failure, also
    an unexpected one, so that one poison file cannot stop a run over thousands."""
    try:
        return decode_image_bytes(data, content_type(location), limits)
    except ImageRejected:
        raise
    except Exception as error:  # noqa: BLE001
        logger.debug("unexpected decoder failure: %s", type(error).__name__)
        raise ImageRejected(Reason.UNDECODABLE_PIXEL_DATA,
                            f"unexpected {type(error).__name__} while decoding the image") from None


def content_type(location: str) -> str:
    """The content type a file's extension suggests (the decoder trusts the content)."""
    return CONTENT_TYPES.get(posixpath.splitext(location)[1].lower(), "application/octet-stream")


def read_input_bytes(location: str, max_bytes: int) -> bytes:
    """A training file's bytes, local or remote; ``ImageRejected`` if unreadable or too large."""
    try:
        data = _read_location(location, max_bytes + 1)
    except OSError as error:  # Beam's BeamIOError is an OSError too
        raise ImageRejected(Reason.UNREADABLE_URI,
                            f"the file cannot be read ({type(error).__name__}); check that "
                            "it exists and is readable") from None
    if len(data) > max_bytes:
        raise ImageRejected(Reason.FILE_TOO_LARGE,
                            f"the file is over the limit of {max_bytes} bytes; raise "
                            "max_file_bytes if such files are expected")
    return data


# -- locations and digests -------------------------------------------------------------

def is_uri(location: str) -> bool:
    """Whether ``location`` is a URI (gs://, file://...) rather than a local path."""
    # A one-letter "scheme" is a Windows drive, not a URI.
    return len(urllib.parse.urlsplit(location).scheme) > 1


def _read_location(location: str, limit: int = -1) -> bytes:
    """Up to ``limit`` bytes (all by default) of a local file or a URI."""
    if not is_uri(location):
        with open(location, "rb") as stream:
            return stream.read(limit)
    from apache_beam.io.filesystem import CompressionTypes  # noqa: PLC0415 - slow import
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    with FileSystems.open(location, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        return stream.read(limit)


def _parent(location: str) -> str:
    if is_uri(location):
        return posixpath.dirname(location)
    return os.path.dirname(os.path.abspath(location))


def _resolve(path: str, base: str) -> str:
    """A CSV path as a location: absolute paths and URIs as they are, others under ``base``."""
    if is_uri(path) or os.path.isabs(path):
        return path
    if is_uri(base):
        return f"{base.rstrip('/')}/{path}"
    return os.path.normpath(os.path.join(base, path))


def _key(location: str, source: str) -> str:
    """``location`` relative to the ``source`` folder (posix), or as is if outside it."""
    if is_uri(location) or is_uri(source):
        prefix = source.rstrip("/") + "/"
        return location[len(prefix):] if location.startswith(prefix) else location
    relative = os.path.relpath(os.path.abspath(location), os.path.abspath(source))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return location
    return Path(relative).as_posix()


def _location_sha256(location: str):
    if not is_uri(location):
        return _file_sha256(Path(location))
    return hashlib.sha256(_read_location(location))


def _location_digest(location: str) -> bytes:
    """The file's sha256, or a fixed marker for a file that cannot be read (preprocessing
    rejects it; it becoming readable changes the fingerprint)."""
    try:
        return _location_sha256(location).digest()
    except OSError:
        return b"unreadable"


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


def shard_role_keys(examples, manifest) -> list[str]:
    """Each example's role key (``batch_training.roles``), equal to what reading the
    source directly gives: its group (the labels CSV's, else the patient or study its
    DICOM header names) if any, else its content's sha256."""
    files = [source for source in examples.sources if not source.startswith("npz:")]
    groups = source_groups(manifest.source, manifest.labels_csv, files) if files else {}
    return [role_key(digest, groups.get(source)) for source, digest
            in zip(examples.sources, examples.sha256)]


def load_shards(output_dir: str) -> LabeledData:
    """A preprocessing output folder -> ``LabeledData`` (train, and validation or val).

    Arrays are bit for bit what ``preprocess`` produced, sorted by source; the
    fingerprint is the source's (from the manifest); ``skipped`` the rejected files.
    """
    from batch_training.shards import PreprocessingManifest, read_split  # noqa: PLC0415 - TF

    manifest = PreprocessingManifest.from_dir(str(output_dir))
    train = read_split(output_dir, TRAIN_SPLIT, manifest)
    val = read_split(output_dir, manifest.validation_split(), manifest)
    if not len(train.labels) or not len(val.labels):
        raise ValueError(f"{output_dir}: the train or validation split is empty "
                         f"({len(train.labels)} and {len(val.labels)} examples)")
    return LabeledData(train.images, train.labels, val.images, val.labels, manifest.classes,
                       fingerprint=manifest.fingerprint, skipped=manifest.rejected,
                       train_keys=tuple(shard_role_keys(train, manifest)))

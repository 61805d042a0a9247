"""The preprocessed-examples format: its manifest, its tf.Example schema, and reading it back.

``batch_training.preprocess`` writes these folders; ``datasets`` reads them through
here (TFXIO) for training and evaluation, so reading never imports the writer.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from tensorflow_metadata.proto.v0 import schema_pb2

from batch_training.labeled import PREPROCESSED_FORMAT, PREPROCESSED_MANIFEST, VALIDATION_SPLITS
from streaming.imaging.preprocessing import PreprocessingSpec

MANIFEST_SCHEMA_VERSION = 1
REJECTED_FILE = "rejected.jsonl"
SCHEMA_FILE = "schema.pbtxt"
SHARD_SUFFIX = ".tfrecord"
# Feature name -> what it holds; the manifest repeats it for whoever opens the shards.
FEATURES = {
    "image": "float list: the model input (height, width, channels) flattened row-major",
    "label": "int64: index into the manifest's classes",
    "height": "int64", "width": "int64", "channels": "int64",
    "source": "bytes: path relative to the source, or npz:<split>:<index>",
    "sha256": "bytes: hex sha256 of the source file, or of the npz array row",
}
_SHARD_NAME = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}" + re.escape(SHARD_SUFFIX) + "$")


# -- the manifest ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PreprocessingManifest:
    """``manifest.json`` of a preprocessing output folder.

    ``counts``: split -> class name -> examples. ``shard_files``: split -> file names
    relative to the folder; ``shard_patterns`` the same as globs. ``rejected``: files
    listed in ``rejected.jsonl``. ``fingerprint``: of the source, as
    ``datasets.fingerprint_source`` computes it.
    """
    source: str
    source_kind: str
    fingerprint: str
    preprocessing: dict
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    shard_files: dict[str, tuple[str, ...]]
    shard_patterns: dict[str, str]
    rejected: int
    created_at: str
    tools: dict[str, str]
    labels_csv: str | None = None
    validation_fraction: float | None = None
    rejected_file: str = REJECTED_FILE
    features: dict[str, str] = dataclasses.field(default_factory=FEATURES.copy)
    format: str = PREPROCESSED_FORMAT
    schema_version: int = MANIFEST_SCHEMA_VERSION

    @property
    def spec(self) -> PreprocessingSpec:
        return PreprocessingSpec.from_dict(self.preprocessing)

    def examples(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def validation_split(self) -> str:
        """The name this output gives its validation split: validation or val."""
        present = [name for name in VALIDATION_SPLITS if name in self.counts]
        if len(present) != 1:
            raise ValueError(f"expected one validation split ({' or '.join(VALIDATION_SPLITS)}) "
                             f"in the manifest, found splits {sorted(self.counts)}")
        return present[0]

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        document["classes"] = list(self.classes)
        document["shard_files"] = {split: list(files) for split, files in self.shard_files.items()}
        return document

    @classmethod
    def from_dict(cls, document: dict) -> "PreprocessingManifest":
        if document.get("format") != PREPROCESSED_FORMAT:
            raise ValueError(f"not a preprocessing manifest (format {document.get('format')!r})")
        if document.get("schema_version") != MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"manifest schema version {document.get('schema_version')} is not "
                             f"{MANIFEST_SCHEMA_VERSION}; preprocess the data again")
        fields = {field.name for field in dataclasses.fields(cls)}
        document = {key: value for key, value in document.items() if key in fields}
        document["classes"] = tuple(document["classes"])
        document["shard_files"] = {split: tuple(files)
                                   for split, files in document["shard_files"].items()}
        return cls(**document)

    @classmethod
    def from_dir(cls, output_dir: str) -> "PreprocessingManifest":
        """Read ``<output_dir>/manifest.json`` (local or a URI)."""
        path = FileSystems.join(str(output_dir), PREPROCESSED_MANIFEST)
        if not FileSystems.exists(path):
            raise ValueError(f"{output_dir} has no {PREPROCESSED_MANIFEST}: it is not a "
                             "preprocessing output, or its run did not finish")
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            return cls.from_dict(json.loads(stream.read().decode("utf-8")))


def example_schema(spec: PreprocessingSpec) -> schema_pb2.Schema:
    """The TensorFlow Metadata schema of the examples: every feature present, fixed length."""
    schema = schema_pb2.Schema()
    sizes = {"image": spec.height * spec.width * spec.channels}
    types = {"image": schema_pb2.FLOAT, "source": schema_pb2.BYTES, "sha256": schema_pb2.BYTES}
    for name in FEATURES:
        feature = schema.feature.add(name=name, type=types.get(name, schema_pb2.INT))
        feature.shape.dim.add(size=sizes.get(name, 1))
        feature.presence.min_fraction = 1.0
    return schema


# -- reading the shards back ------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class SplitExamples:
    """The examples of one split, sorted by ``sources`` (numbers in names compare as numbers)."""
    images: np.ndarray
    labels: np.ndarray
    sources: list[str]
    sha256: list[str]


def read_split(output_dir: str, split: str,
               manifest: PreprocessingManifest | None = None) -> SplitExamples:
    """Read one split's shards through TFXIO, checked against the manifest's counts."""
    # TFXIO imports TensorFlow (seconds); only readers pay for it, not the pipeline.
    from tfx_bsl.public import tfxio  # noqa: PLC0415

    manifest = manifest or PreprocessingManifest.from_dir(output_dir)
    if split not in manifest.counts:
        raise ValueError(f"{output_dir} has no {split} split; it has {sorted(manifest.counts)}")
    spec = manifest.spec
    paths = [FileSystems.join(str(output_dir), name) for name in manifest.shard_files[split]]
    images, labels, sources, digests = [], [], [], []
    if paths:
        record = tfxio.TFExampleRecord(file_pattern=paths, schema=example_schema(spec),
                                       telemetry_descriptors=["medimg", "load_shards"])
        options = tfxio.RecordBatchesOptions(batch_size=256, shuffle=False, num_epochs=1)
        for batch in record.RecordBatches(options):
            _check_shapes(batch, spec, output_dir)
            images.append(batch.column("image").flatten().to_numpy().reshape(
                -1, *spec.input_shape))
            labels.append(batch.column("label").flatten().to_numpy())
            sources.extend(value.decode("utf-8")
                           for value in batch.column("source").flatten().to_pylist())
            digests.extend(value.decode("ascii")
                           for value in batch.column("sha256").flatten().to_pylist())
    if len(sources) != manifest.examples(split):
        raise ValueError(f"{output_dir}: the {split} shards hold {len(sources)} examples but the "
                         f"manifest counts {manifest.examples(split)}; the folder is incomplete "
                         "or was changed: preprocess again")
    order = sorted(range(len(sources)), key=lambda index: _natural_key(sources[index]))
    stacked_images = (np.concatenate(images) if images
                      else np.empty((0, *spec.input_shape), np.float32))
    stacked_labels = np.concatenate(labels).astype(np.int64) if labels else np.empty(0, np.int64)
    return SplitExamples(stacked_images[order], stacked_labels[order],
                         [sources[i] for i in order], [digests[i] for i in order])


def _check_shapes(batch: pa.RecordBatch, spec: PreprocessingSpec, output_dir: str) -> None:
    for name, expected in zip(("height", "width", "channels"), spec.input_shape):
        if set(batch.column(name).flatten().to_pylist()) - {expected}:
            raise ValueError(f"{output_dir}: examples with {name} other than {expected}, the "
                             "manifest's preprocessing; the shards do not match their manifest")


def _natural_key(source: str) -> tuple:
    """'npz:train:10' after 'npz:train:9': digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", source))

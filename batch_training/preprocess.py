"""Batch preprocessing: a labeled dataset in, TFRecord shards of tf.Examples out.

    files: ListInputFiles -> ReadFiles -> DecodeImages -> PreprocessImages --+
    npz:   ListArrayChunks -> PreprocessArrayRows ---------------------------+
                                                                            v
           BatchExamples -> EncodeExamples -> Write<Split>Shards -----> WriteManifest
           ReadFiles/DecodeImages failures -> WriteRejections ------------^
           CountExamples -------------------------------------------------^

Inputs (``run_preprocessing``): a folder ``<root>/{train,validation|val}/<class>/*``,
a folder of files with a labels CSV (``path,label[,split]``), or a MedMNIST-style
``.npz``; see ``batch_training.datasets`` for each. Every file goes through the
streaming job's ``decode_image_bytes`` and every image through ``preprocess``, so the
shards hold exactly what serving feeds the model.

Outputs in ``output_dir``:

- ``<split>-00000-of-0000N.tfrecord``: one ``tf.train.Example`` per image with
  ``image`` (float list, the model input (height, width, channels) flattened in
  row-major order, float32 so it reads back bit for bit), ``label`` (class index),
  ``height``, ``width``, ``channels`` (int64), ``source`` (the file's path relative
  to the source, or ``npz:<split>:<index>``) and ``sha256`` (hex of the file, or of
  the array row's bytes).
- ``rejected.jsonl``: one line per file that could not be read or decoded
  (``path``, ``reason`` code, ``message``); never silently dropped.
- ``schema.pbtxt``: the TensorFlow Metadata schema of the examples, for TFXIO/TFX tools.
- ``manifest.json``: written last, so a folder with a manifest is complete. It
  records the source and its fingerprint (``datasets.fingerprint_source``), the
  preprocessing spec, classes, counts per split and class, rejections, the shard
  files, and the tool versions (``PreprocessingManifest``).

tfx-bsl: ``RecordBatchToExamplesEncoder`` encodes each batch of images (an Arrow
RecordBatch) into tf.Examples, and ``load_shards`` reads them back through TFXIO
(``TFExampleRecord.RecordBatches`` with the schema). Beam's own ``WriteToTFRecord``
writes the shards: tfx-bsl has no sink of its own.

Local runs are pinned to Beam's FnApiRunner (DirectRunner would try to download the
Prism runner); ``pipeline_args`` carries Dataflow options (workers then need this
package and tfx-bsl installed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tfx_bsl
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

from batch_training import datasets
from batch_training.datasets import load_shards  # noqa: F401 - callers read shards from here
from batch_training.labeled import TRAIN_SPLIT, VALIDATION_SPLITS, LabeledFile
from batch_training.roles import array_sha256
from batch_training.shards import (FEATURES, PREPROCESSED_MANIFEST, REJECTED_FILE, SCHEMA_FILE,  # noqa: F401
                                   SHARD_SUFFIX, _SHARD_NAME, PreprocessingManifest, SplitExamples,
                                   example_schema, read_split)
from streaming.runtime import logs
from streaming.imaging.preprocessing import PreprocessingSpec, preprocess
from streaming.imaging.types import ImageLimits, ImageRejected
from streaming.modeling.metadata import utc_now
from streaming.job.options import LOCAL_RUNNER

logger = logging.getLogger(__name__)

REJECTED = "rejected"
FOLDER, LABELS_CSV, NPZ = "folder", "labels_csv", "npz"
_ARRAY_CHUNK_ROWS = 512
_MAX_BATCH_BYTES = 32 << 20  # bounds memory when images are large (224x224x3 is 600 KB)



# -- values passed between the steps ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArrayChunk:
    """Rows [start, stop) of one split of an npz."""
    location: str
    split: str
    start: int
    stop: int


@dataclasses.dataclass(eq=False)
class FileBytes:
    """A listed file's content and its sha256."""
    file: LabeledFile
    data: bytes
    sha256: str

    @property
    def key(self) -> str:
        return self.file.key


@dataclasses.dataclass(eq=False)
class DecodedFile:
    """A listed file's display-ready pixels (float32 in [0, 1])."""
    file: LabeledFile
    pixels: np.ndarray
    sha256: str


@dataclasses.dataclass(eq=False)
class PreprocessedImage:
    """One example: the model input (height, width, channels) float32 and where it came from."""
    source: str
    split: str
    label: int
    sha256: str
    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class RejectedInput:
    """A file left out of the shards: its key, the dead-letter reason code and a safe message."""
    path: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class PreprocessingPlan:
    """What a run reads, decided before the pipeline starts (nothing decoded yet)."""
    source: str
    source_kind: str
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    fingerprint: str
    files: tuple[LabeledFile, ...] = ()
    chunks: tuple[ArrayChunk, ...] = ()
    labels_csv: str | None = None
    validation_fraction: float | None = None


# -- the work, in plain functions ----------------------------------------------------

def read_file(file: LabeledFile, max_bytes: int) -> FileBytes:
    """LabeledFile -> its bytes and sha256; ``ImageRejected`` if unreadable or too large."""
    data = datasets.read_input_bytes(file.location, max_bytes)
    return FileBytes(file, data, hashlib.sha256(data).hexdigest())


def decode_file(item: FileBytes, limits: ImageLimits) -> DecodedFile:
    """FileBytes -> display-ready pixels through the streaming job's decoder.

    Raises ``ImageRejected`` with the dead-letter reason when the file cannot be decoded.
    """
    decoded = datasets.decode_input(item.data, item.file.location, limits)
    return DecodedFile(item.file, decoded.pixels, item.sha256)


def preprocess_file(decoded: DecodedFile, spec: PreprocessingSpec) -> PreprocessedImage:
    """DecodedFile -> the model input, through the one ``preprocess`` function."""
    return PreprocessedImage(source=decoded.file.key, split=decoded.file.split,
                             label=decoded.file.label, sha256=decoded.sha256,
                             pixels=preprocess(decoded.pixels, spec))


def preprocess_array_rows(chunk: ArrayChunk, images: np.ndarray, labels: np.ndarray,
                          spec: PreprocessingSpec) -> list[PreprocessedImage]:
    """Rows of a split's arrays -> model inputs, scaled as ``datasets.load_npz`` scales them."""
    rows = images[chunk.start:chunk.stop]
    # load_npz's own helper, so both paths scale uint8 and float images identically.
    inputs = datasets._preprocess_array(rows, spec, f"{chunk.location}:{chunk.split}")
    return [PreprocessedImage(source=f"npz:{chunk.split}:{index}", split=chunk.split,
                              label=int(labels[index]),
                              sha256=_array_sha256(row), pixels=pixels)
            for index, row, pixels in zip(range(chunk.start, chunk.stop), rows, inputs)]


_array_sha256 = array_sha256  # one definition: the role keys the gate computes depend on it


def examples_record_batch(images: Sequence[PreprocessedImage]) -> pa.RecordBatch:
    """A batch of images as an Arrow RecordBatch, one list column per tf.Example feature."""
    count = len(images)
    pixels = np.stack([image.pixels for image in images]).reshape(count, -1)
    height, width, channels = images[0].pixels.shape
    return pa.RecordBatch.from_arrays([
        pa.LargeListArray.from_arrays(
            pa.array(np.arange(count + 1, dtype=np.int64) * pixels.shape[1]),
            pa.array(pixels.ravel())),
        _one_per_row([image.label for image in images], pa.int64()),
        _one_per_row([height] * count, pa.int64()),
        _one_per_row([width] * count, pa.int64()),
        _one_per_row([channels] * count, pa.int64()),
        _one_per_row([image.source.encode("utf-8") for image in images], pa.binary()),
        _one_per_row([image.sha256.encode("ascii") for image in images], pa.binary()),
    ], names=list(FEATURES))


def _one_per_row(values: list, value_type: pa.DataType) -> pa.LargeListArray:
    return pa.LargeListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int64)),
                                         pa.array(values, value_type))


def encode_examples(images: Sequence[PreprocessedImage],
                    encoder: RecordBatchToExamplesEncoder | None = None) -> list[bytes]:
    """Images -> serialized tf.Examples (tfx-bsl's encoder), in the same order."""
    return (encoder or RecordBatchToExamplesEncoder()).encode(examples_record_batch(images))


def rejection_json(rejected: RejectedInput) -> str:
    """One line of rejected.jsonl."""
    return json.dumps(dataclasses.asdict(rejected))


def split_and_label(image: PreprocessedImage) -> tuple[str, int]:
    return image.split, image.label


def write_manifest(fields: dict, output_dir: str, counts: list, rejected: int,
                   written: list[str]) -> str:
    """The run's fixed facts plus what the pipeline counted -> manifest.json; returns its path.

    ``counts``: ((split, label), examples) pairs; ``written``: the files the sinks wrote.
    """
    classes = fields["classes"]
    per_split = {split: dict.fromkeys(classes, 0) for split in fields["splits"]}
    for (split, label), examples in counts:
        per_split[split][classes[label]] = examples
    shard_files = {split: [] for split in fields["splits"]}
    for path in written:
        match = _SHARD_NAME.match(posixpath.basename(path))
        if match and match["split"] in shard_files:
            shard_files[match["split"]].append(posixpath.basename(path))
    manifest = PreprocessingManifest(
        source=fields["source"], source_kind=fields["source_kind"],
        fingerprint=fields["fingerprint"], preprocessing=fields["preprocessing"],
        classes=tuple(classes), counts=per_split,
        shard_files={split: tuple(sorted(files)) for split, files in shard_files.items()},
        shard_patterns={split: f"{split}-?????-of-{fields['shards']:05d}{SHARD_SUFFIX}"
                        for split in fields["splits"]},
        rejected=rejected, created_at=utc_now(), tools=fields["tools"],
        labels_csv=fields["labels_csv"], validation_fraction=fields["validation_fraction"])
    path = FileSystems.join(output_dir, PREPROCESSED_MANIFEST)
    _write_text(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="application/json",
                            compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        stream.write(text.encode("utf-8"))


# -- Beam steps ------------------------------------------------------------------------

class RejectFailures(beam.DoFn):
    """element -> ``step(element, *args)``, or a RejectedInput on the ``rejected`` output
    when the step raises ``ImageRejected``. Elements name themselves by ``.key``."""

    def __init__(self, step, *args):
        self._step = step
        self._args = args

    def setup(self):
        logs.silence_phi_sources()  # pydicom must not quote header values in worker logs

    def process(self, element) -> Iterable:
        try:
            yield self._step(element, *self._args)
        except ImageRejected as rejected:
            logger.debug("rejected %s: %s", element.key, rejected.reason.value)
            yield beam.pvalue.TaggedOutput(REJECTED, RejectedInput(
                element.key, rejected.reason.value, rejected.message))


class PreprocessArrayRows(beam.DoFn):
    """ArrayChunk -> PreprocessedImage per row. Holds the last split read, so an npz
    is read once per split and worker rather than once per chunk."""

    def __init__(self, spec: PreprocessingSpec):
        self._spec = spec
        self._loaded: tuple[tuple[str, str], np.ndarray, np.ndarray] | None = None

    def process(self, chunk: ArrayChunk) -> Iterable[PreprocessedImage]:
        wanted = (chunk.location, chunk.split)
        if self._loaded is None or self._loaded[0] != wanted:
            self._loaded = (wanted, *datasets.read_npz_split(chunk.location, chunk.split))
        _, images, labels = self._loaded
        yield from preprocess_array_rows(chunk, images, labels, self._spec)


class EncodeExamples(beam.DoFn):
    """A batch of PreprocessedImage -> serialized tf.Examples, each on its split's output."""

    def setup(self):
        self._encoder = RecordBatchToExamplesEncoder()

    def process(self, batch: list[PreprocessedImage]) -> Iterable:
        for image, example in zip(batch, encode_examples(batch, self._encoder)):
            yield beam.pvalue.TaggedOutput(image.split, example)


def build_pipeline(pipeline: beam.Pipeline, plan: PreprocessingPlan, spec: PreprocessingSpec,
                   output_dir: str, shards: int, limits: ImageLimits = ImageLimits()) -> None:
    """Wire a preprocessing run into ``pipeline``: named steps, top to bottom."""
    if plan.source_kind == NPZ:
        images = (pipeline
                  | "ListArrayChunks" >> beam.Create(plan.chunks)
                  | "PreprocessArrayRows" >> beam.ParDo(PreprocessArrayRows(spec)))
        rejections = pipeline | "NothingToReject" >> beam.Create([])
    else:
        files = pipeline | "ListInputFiles" >> beam.Create(plan.files)
        read = files | "ReadFiles" >> beam.ParDo(
            RejectFailures(read_file, limits.max_file_bytes)).with_outputs(REJECTED, main="read")
        decoded = read.read | "DecodeImages" >> beam.ParDo(
            RejectFailures(decode_file, limits)).with_outputs(REJECTED, main="decoded")
        images = decoded.decoded | "PreprocessImages" >> beam.Map(preprocess_file, spec)
        rejections = ((read[REJECTED], decoded[REJECTED])
                      | "CollectRejections" >> beam.Flatten())

    examples = (images
                | "BatchExamples" >> beam.BatchElements(
                    min_batch_size=1, max_batch_size=_batch_size(spec))
                | "EncodeExamples" >> beam.ParDo(EncodeExamples()).with_outputs(*plan.splits))
    written = [examples[split] | f"Write{_step_name(split)}Shards" >> beam.io.WriteToTFRecord(
                   FileSystems.join(output_dir, split), file_name_suffix=SHARD_SUFFIX,
                   num_shards=shards)
               for split in plan.splits]
    written.append(rejections
                   | "FormatRejections" >> beam.Map(rejection_json)
                   | "WriteRejections" >> beam.io.WriteToText(
                       FileSystems.join(output_dir, REJECTED_FILE), num_shards=1,
                       shard_name_template=""))

    counts = (images
              | "KeyBySplitAndClass" >> beam.Map(split_and_label)
              | "CountExamples" >> beam.combiners.Count.PerElement())
    rejected = rejections | "CountRejections" >> beam.combiners.Count.Globally()
    all_written = written | "CollectWrittenFiles" >> beam.Flatten()
    _ = (pipeline
         | "ManifestFields" >> beam.Create([_manifest_fields(plan, spec, shards)])
         | "WriteManifest" >> beam.Map(
             write_manifest, output_dir, counts=beam.pvalue.AsList(counts),
             rejected=beam.pvalue.AsSingleton(rejected),
             written=beam.pvalue.AsList(all_written)))


def _batch_size(spec: PreprocessingSpec) -> int:
    image_bytes = 4 * spec.height * spec.width * spec.channels
    return max(1, min(1024, _MAX_BATCH_BYTES // image_bytes))


def _absolute(location: str) -> str:
    return location if datasets.is_uri(location) else os.path.abspath(location)


def _step_name(split: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", split))


def _manifest_fields(plan: PreprocessingPlan, spec: PreprocessingSpec, shards: int) -> dict:
    return {"source": _absolute(plan.source), "source_kind": plan.source_kind,
            "fingerprint": plan.fingerprint, "preprocessing": spec.to_dict(),
            "classes": list(plan.classes), "splits": list(plan.splits), "shards": shards,
            "labels_csv": plan.labels_csv and _absolute(plan.labels_csv),
            "validation_fraction": plan.validation_fraction,
            "tools": {"apache_beam": beam.__version__, "tfx_bsl": tfx_bsl.__version__,
                      "pyarrow": pa.__version__}}


# -- planning and running -------------------------------------------------------------

def plan_preprocessing(source: str, *, labels_csv: str | None = None,
                       class_names: Sequence[str] | None = None,
                       validation_fraction: float = datasets.DEFAULT_VALIDATION_FRACTION
                       ) -> PreprocessingPlan:
    """List what ``source`` holds and fingerprint it, reading bytes but decoding nothing."""
    source = str(source)
    if labels_csv is not None:
        listing = datasets.list_labels_csv(source, labels_csv, class_names, validation_fraction)
        splits = sorted({file.split for file in listing.files} | {TRAIN_SPLIT, "validation"},
                        key=_split_rank)
        return PreprocessingPlan(source, LABELS_CSV, listing.classes, tuple(splits),
                                 listing.fingerprint, files=listing.files,
                                 labels_csv=str(labels_csv),
                                 validation_fraction=validation_fraction)
    if source.endswith(".npz"):
        npz = datasets.list_npz_splits(source, class_names)
        chunks = tuple(ArrayChunk(source, split, start, min(start + _ARRAY_CHUNK_ROWS, size))
                       for split, size in npz.sizes.items()
                       for start in range(0, size, _ARRAY_CHUNK_ROWS))
        return PreprocessingPlan(source, NPZ, npz.classes, tuple(npz.sizes),
                                 datasets.fingerprint_source(source), chunks=chunks)
    if os.path.isdir(source) and not datasets.is_preprocessed_output(source):
        listing = datasets.list_folder(source, class_names)
        if not listing.files:
            raise ValueError(f"{source} holds no .png, .jpg, .jpeg or .dcm files in its "
                             "class folders")
        splits = sorted({file.split for file in listing.files}, key=_split_rank)
        return PreprocessingPlan(source, FOLDER, listing.classes, tuple(splits),
                                 listing.fingerprint, files=listing.files)
    raise ValueError(f"{source} is not a training source: pass a folder laid out as "
                     "<root>/{train,validation}/<class>/*, a folder of images with "
                     "labels_csv=..., or a MedMNIST-style .npz")


def _split_rank(split: str) -> tuple[int, str]:
    order = (TRAIN_SPLIT, *VALIDATION_SPLITS, datasets.TEST_SPLIT)
    return (order.index(split) if split in order else len(order)), split


def pipeline_options(runner: str, pipeline_args: Sequence[str] | None) -> PipelineOptions:
    """Beam options from ``pipeline_args``; ``runner`` unless they name one themselves."""
    options = PipelineOptions(list(pipeline_args or ()))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = runner
    return options


def run_preprocessing(source: str, output_dir: str, spec: PreprocessingSpec, *,
                      labels_csv: str | None = None,
                      class_names: Sequence[str] | None = None,
                      validation_fraction: float = datasets.DEFAULT_VALIDATION_FRACTION,
                      shards: int = 2, runner: str = LOCAL_RUNNER,
                      pipeline_args: Sequence[str] | None = None,
                      limits: ImageLimits = ImageLimits()) -> PreprocessingManifest:
    """Preprocess ``source`` into TFRecord shards in ``output_dir`` and return the manifest.

    ``source``: a train/validation folder, a folder of images with ``labels_csv``, or
    an ``.npz``. ``shards``: files per split. ``runner``: Beam runner (FnApiRunner by
    default); ``pipeline_args`` (e.g. ``--project``, ``--temp_location``) may name
    another with ``--runner``, which wins. Outputs of an earlier run in ``output_dir``
    are replaced, its manifest first, so a half-written folder never looks complete.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    output_dir = str(output_dir)
    _check_output_dir(str(source), output_dir)
    plan = plan_preprocessing(str(source), labels_csv=labels_csv, class_names=class_names,
                              validation_fraction=validation_fraction)
    _remove_previous_outputs(output_dir)
    _write_text(FileSystems.join(output_dir, SCHEMA_FILE), str(example_schema(spec)))
    logger.info("preprocessing %d %s of %s (%s) into %s", len(plan.files) or sum(
        chunk.stop - chunk.start for chunk in plan.chunks),
        "files" if plan.files else "array rows", source, plan.source_kind, output_dir)

    pipeline = beam.Pipeline(options=pipeline_options(runner, pipeline_args))
    build_pipeline(pipeline, plan, spec, output_dir, shards, limits)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"the preprocessing pipeline ended in state {state}")

    manifest = PreprocessingManifest.from_dir(output_dir)
    if manifest.rejected:
        logger.warning("%d files could not be read or decoded; %s says which and why",
                       manifest.rejected, FileSystems.join(output_dir, REJECTED_FILE))
    logger.info("wrote %s", ", ".join(f"{manifest.examples(split)} {split}"
                                      for split in manifest.counts))
    return manifest


def _check_output_dir(source: str, output_dir: str) -> None:
    """Refuse to write into the source: the shards would become part of it."""
    if datasets.is_uri(output_dir) or datasets.is_uri(source):
        return
    if os.path.isdir(source):
        inside = os.path.commonpath([os.path.realpath(source), os.path.realpath(output_dir)])
        if inside == os.path.realpath(source):
            raise ValueError(f"output_dir {output_dir} is inside the source folder {source}; "
                             "write the shards somewhere else")
    os.makedirs(output_dir, exist_ok=True)


def _remove_previous_outputs(output_dir: str) -> None:
    outputs = [FileSystems.join(output_dir, name)
               for name in (PREPROCESSED_MANIFEST, REJECTED_FILE, SCHEMA_FILE)]
    # The manifest goes first: without it the folder no longer claims to be complete.
    for path in outputs:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    shard_glob = FileSystems.join(output_dir, f"*-?????-of-?????{SHARD_SUFFIX}")
    old_shards = [found.path for match in FileSystems.match([shard_glob])
                  for found in match.metadata_list]
    if old_shards:
        logger.info("replacing %d shard files of an earlier run in %s", len(old_shards),
                    output_dir)
        FileSystems.delete(old_shards)

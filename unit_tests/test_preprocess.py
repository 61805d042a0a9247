"""Batch preprocessing: a labeled dataset -> TFRecord shards, on Beam's local runner.

Every test that runs the pipeline checks what a user relies on: the shards read back
bit for bit as ``preprocess`` output, rejected files are listed with a reason, and
the manifest's fingerprint is the one training records and the nightly DAG compares.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_training import datasets
from batch_training.preprocess import (PreprocessingManifest, build_pipeline, decode_file,
                                       load_shards, pipeline_options, plan_preprocessing,
                                       read_file, read_split, run_preprocessing)
from streaming.imaging.decoding import decode_image_bytes
from streaming.local.reference_data import PNEUMONIAMNIST, shared_data_dir
from streaming.imaging.preprocessing import PreprocessingSpec, preprocess
from streaming.imaging.types import ImageLimits, ImageRejected
from unit_tests.conftest import phantom_folder, write_phantom

SPEC = PreprocessingSpec(32, 32, 1)



def _expected_input(path: Path, spec: PreprocessingSpec) -> np.ndarray:
    """What serving feeds the model for this file."""
    decoded = decode_image_bytes(path.read_bytes(), datasets.content_type(str(path)),
                                 ImageLimits())
    return preprocess(decoded.pixels, spec)


def _rejections(output_dir: Path) -> list[dict]:
    lines = (output_dir / "rejected.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = phantom_folder(tmp_path_factory.mktemp("folder") / "images", broken=True)
    output_dir = tmp_path_factory.mktemp("folder-shards")
    return root, output_dir, run_preprocessing(str(root), str(output_dir), SPEC)


# -- folder source ---------------------------------------------------------------------

def test_folder_shards_hold_exactly_what_serving_feeds_the_model(folder_run):
    root, output_dir, manifest = folder_run
    assert manifest.classes == ("lesion", "normal")
    assert manifest.counts == {"train": {"lesion": 3, "normal": 3},
                               "validation": {"lesion": 2, "normal": 2}}
    assert manifest.shard_files["train"] == ("train-00000-of-00002.tfrecord",
                                             "train-00001-of-00002.tfrecord")
    assert manifest.spec == SPEC
    for split in ("train", "validation"):
        examples = read_split(str(output_dir), split)
        assert examples.sources == sorted(examples.sources)  # sorted for reproducible training
        for source, image, label, digest in zip(examples.sources, examples.images,
                                                examples.labels, examples.sha256):
            path = root / source
            assert image.dtype == np.float32 and image.shape == (32, 32, 1)
            np.testing.assert_array_equal(image, _expected_input(path, SPEC))  # bit for bit
            assert manifest.classes[label] == path.parent.name
            assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrupt_file_is_listed_with_its_reason_and_counted(folder_run):
    _root, output_dir, manifest = folder_run
    assert _rejections(output_dir) == [{
        "path": "train/lesion/broken.dcm", "reason": "not_an_image",
        "message": "the content is not DICOM, PNG or JPEG (judged by its first bytes, not by "
                   "the declared content type)"}]
    assert manifest.rejected == 1
    assert load_shards(str(output_dir)).skipped == 1


def test_manifest_fingerprint_is_the_sources_and_what_training_records(folder_run):
    root, output_dir, manifest = folder_run
    from_raw = datasets.load_labeled_data(root, SPEC)
    from_shards = datasets.load_labeled_data(output_dir, SPEC)
    assert manifest.fingerprint.startswith("sha256:")
    assert (manifest.fingerprint == datasets.fingerprint_source(root) == from_raw.fingerprint
            == from_shards.fingerprint == datasets.fingerprint_source(output_dir))
    # The same examples as the in-memory loader, which orders them class by class.
    assert from_shards.classes == from_raw.classes and from_shards.skipped == from_raw.skipped
    for shards_x, raw_x in ((from_shards.train_x, from_raw.train_x),
                            (from_shards.val_x, from_raw.val_x)):
        assert sorted(map(bytes, shards_x)) == sorted(map(bytes, raw_x))


def test_shards_are_plain_tf_examples_a_user_can_inspect(folder_run):
    import tensorflow as tf  # noqa: PLC0415 - only this test needs it directly
    from google.protobuf import text_format  # noqa: PLC0415
    from tensorflow_metadata.proto.v0 import schema_pb2  # noqa: PLC0415

    root, output_dir, _manifest = folder_run
    shard = output_dir / "validation-00000-of-00002.tfrecord"
    other = output_dir / "validation-00001-of-00002.tfrecord"
    records = [tf.train.Example.FromString(record.numpy())
               for record in tf.data.TFRecordDataset([str(shard), str(other)])]
    assert len(records) == 4
    features = records[0].features.feature
    assert set(features) == {"image", "label", "height", "width", "channels", "source", "sha256"}
    assert [features[name].int64_list.value[0] for name in ("height", "width", "channels")] \
        == [32, 32, 1]
    source = features["source"].bytes_list.value[0].decode()
    image = np.asarray(features["image"].float_list.value, np.float32).reshape(32, 32, 1)
    np.testing.assert_array_equal(image, _expected_input(root / source, SPEC))
    schema = text_format.Parse((output_dir / "schema.pbtxt").read_text(), schema_pb2.Schema())
    assert {feature.name for feature in schema.feature} == set(features)


def test_fingerprint_is_stable_and_follows_each_input_file(tmp_path):
    root = phantom_folder(tmp_path / "images", broken=True)
    first = datasets.fingerprint_source(root)
    assert datasets.fingerprint_source(root) == first
    (root / "train" / "normal" / "notes.txt").write_text("edited, still not an image")
    assert datasets.fingerprint_source(root) == first
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(root / "validation" / "normal" / "1.png")
    changed = datasets.fingerprint_source(root)
    assert changed != first
    (root / "train" / "lesion" / "broken.dcm").write_bytes(b"still not a dicom file")
    assert datasets.fingerprint_source(root) != changed  # undecodable files count too


# -- labels CSV source -------------------------------------------------------------------

def _labeled_dicoms(root: Path) -> Path:
    """Eight DICOM files with a labels CSV: some rows with a split, some without, one
    absolute path, one naming a file that does not exist."""
    rng = np.random.default_rng(7)
    rows = ["path,label,split"]
    for index in range(8):
        label = ("normal", "lesion")[index % 2]
        write_phantom(root / "studies" / f"image_{index}.dcm", rng, label == "lesion", index)
        split = {0: "validation", 1: "val", 2: "test"}.get(index, "")
        path = (str(root / "studies" / f"image_{index}.dcm") if index == 7
                else f"studies/image_{index}.dcm")
        rows.append(f"{path},{label},{split}")
    rows.append("studies/missing.dcm,normal,train")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_labels_csv_source_round_trips_and_rejects_missing_files(tmp_path):
    root = tmp_path / "dicoms"
    labels_csv = _labeled_dicoms(root)
    output_dir = tmp_path / "shards"
    manifest = run_preprocessing(str(root), str(output_dir), SPEC, labels_csv=str(labels_csv),
                                 validation_fraction=0.3)
    listing = datasets.list_labels_csv(root, labels_csv, validation_fraction=0.3)
    assert manifest.classes == ("lesion", "normal") and manifest.source_kind == "labels_csv"
    assert set(manifest.counts) == {"train", "validation", "test"}
    expected = {}
    for file in listing.files:
        expected.setdefault(file.split, set()).add(file.key)
    assert {"studies/image_0.dcm", "studies/image_1.dcm"} <= expected["validation"]
    assert expected["test"] == {"studies/image_2.dcm"}
    assert manifest.rejected == 1
    assert [(r["path"], r["reason"]) for r in _rejections(output_dir)] == [
        ("studies/missing.dcm", "unreadable_uri")]
    for split in ("train", "validation", "test"):
        examples = read_split(str(output_dir), split)
        assert set(examples.sources) == expected[split] - {"studies/missing.dcm"}
        for source, image in zip(examples.sources, examples.images):
            np.testing.assert_array_equal(image, _expected_input(root / source, SPEC))

    raw = datasets.load_labeled_data(root, SPEC, labels_csv=labels_csv, validation_fraction=0.3)
    assert (raw.fingerprint == manifest.fingerprint
            == datasets.fingerprint_source(root, labels_csv=labels_csv))
    assert raw.skipped == 1
    assert sorted(map(bytes, raw.val_x)) == sorted(map(bytes, load_shards(str(output_dir)).val_x))


def test_labels_csv_fingerprint_follows_labels_and_bytes_not_the_row_order(tmp_path):
    root = tmp_path / "dicoms"
    labels_csv = _labeled_dicoms(root)
    first = datasets.fingerprint_source(root, labels_csv)
    header, *rows = labels_csv.read_text().splitlines()
    labels_csv.write_text("\n".join([header, *reversed(rows)]) + "\n")
    assert datasets.fingerprint_source(root, labels_csv) == first
    labels_csv.write_text("\n".join([header, rows[3].replace("lesion", "normal"), *rows[:3],
                                     *rows[4:]]) + "\n")
    relabeled = datasets.fingerprint_source(root, labels_csv)
    assert relabeled != first
    (root / "studies" / "image_5.dcm").write_bytes(b"replaced")
    assert datasets.fingerprint_source(root, labels_csv) != relabeled


def test_rows_without_a_split_are_split_by_a_hash_of_their_path(tmp_path):
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("path,label\n" + "".join(f"img_{i}.dcm,{('a', 'b')[i % 2]}\n"
                                                    for i in range(400)))

    def splits():
        listing = datasets.list_labels_csv(tmp_path, labels_csv, validation_fraction=0.25)
        return [file.split for file in listing.files]

    assert splits() == splits()  # the same file lands in the same split every time
    assert 0.18 < splits().count("validation") / 400 < 0.32


# -- npz source --------------------------------------------------------------------------

def _small_npz(path: Path, size: int = 20, channels: int | None = None) -> Path:
    rng = np.random.default_rng(3)
    shape = (size, size) if channels is None else (size, size, channels)
    arrays = {}
    for split, count in (("train", 23), ("val", 7), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3).reshape(count, 1)
    np.savez(path, class_names=np.array(["normal", "benign", "malignant"]), **arrays)
    return path


def test_npz_source_round_trips_to_exactly_what_load_npz_returns(tmp_path):
    source = _small_npz(tmp_path / "small.npz")
    output_dir = tmp_path / "shards"
    manifest = run_preprocessing(str(source), str(output_dir), SPEC, shards=3)
    assert manifest.classes == ("normal", "benign", "malignant")
    assert {split: manifest.examples(split) for split in manifest.counts} == {
        "train": 23, "val": 7, "test": 5}
    assert manifest.rejected == 0 and _rejections(output_dir) == []
    shards = load_shards(str(output_dir))
    raw = datasets.load_npz(source, SPEC)
    # Sorted by source, npz rows come back in file order: identical arrays, same order.
    np.testing.assert_array_equal(shards.train_x, raw.train_x)
    np.testing.assert_array_equal(shards.train_y, raw.train_y)
    np.testing.assert_array_equal(shards.val_x, raw.val_x)
    assert shards.fingerprint == raw.fingerprint == datasets.fingerprint_source(source)
    assert shards.fingerprint == f"sha256:{hashlib.sha256(source.read_bytes()).hexdigest()}"
    test = read_split(str(output_dir), "test")
    assert test.sources == [f"npz:test:{index}" for index in range(5)]
    with np.load(source) as arrays:
        assert test.sha256[2] == hashlib.sha256(arrays["test_images"][2].tobytes()).hexdigest()
        # load_npz's scaling (times 1/255, which differs from /255 in the last bit).
        np.testing.assert_array_equal(test.images[2], preprocess(
            arrays["test_images"][2].astype(np.float32) * (1.0 / 255.0), SPEC))


def test_a_224x224_rgb_spec_with_normalization(tmp_path):
    spec = PreprocessingSpec(224, 224, 3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    source = _small_npz(tmp_path / "rgb.npz", size=28, channels=3)
    output_dir = tmp_path / "shards"
    manifest = run_preprocessing(str(source), str(output_dir), spec)
    assert manifest.spec == spec
    shards = datasets.load_labeled_data(output_dir, spec)
    assert shards.train_x.shape == (23, 224, 224, 3)
    np.testing.assert_array_equal(shards.train_x, datasets.load_npz(source, spec).train_x)


def test_shards_refuse_a_different_spec_or_classes(tmp_path):
    source = _small_npz(tmp_path / "small.npz")
    run_preprocessing(str(source), str(tmp_path / "shards"), SPEC)
    with pytest.raises(ValueError, match="preprocessed with"):
        datasets.load_labeled_data(tmp_path / "shards", PreprocessingSpec(28, 28, 1))
    with pytest.raises(ValueError, match="class_names"):
        datasets.load_labeled_data(tmp_path / "shards", SPEC, class_names=["a", "b", "c"])


def test_pneumoniamnist_preprocesses_with_its_published_split_sizes(tmp_path):
    path = shared_data_dir() / PNEUMONIAMNIST
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared PneumoniaMNIST file is not shipped with "
                    "the repository; set MEDIMG_SHARED_DATA to the folder that holds it)")
    manifest = run_preprocessing(str(path), str(tmp_path / "shards"), PreprocessingSpec(28, 28, 1))
    assert manifest.examples("train") == 4708 and manifest.examples("val") == 524
    assert manifest.counts["train"] == {"class_0": 1214, "class_1": 3494}
    assert manifest.fingerprint == (
        "sha256:7b4a6977c121db287270afe9b2080057c84653297ec75bc52903ba473ac2649d")
    data = load_shards(str(tmp_path / "shards"))
    assert data.train_x.shape == (4708, 28, 28, 1) and data.val_x.shape == (524, 28, 28, 1)


# -- runs, runner and steps ---------------------------------------------------------------

def test_a_rerun_replaces_the_previous_output(tmp_path):
    source = _small_npz(tmp_path / "small.npz")
    output_dir = tmp_path / "shards"
    run_preprocessing(str(source), str(output_dir), SPEC, shards=3)
    manifest = run_preprocessing(str(source), str(output_dir), SPEC, shards=1)
    assert sorted(p.name for p in output_dir.glob("*.tfrecord")) == [
        "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord"]
    assert PreprocessingManifest.from_dir(str(output_dir)) == manifest
    assert load_shards(str(output_dir)).train_x.shape == (23, 32, 32, 1)


def test_output_inside_the_source_is_refused(tmp_path):
    root = phantom_folder(tmp_path / "images", broken=True)
    with pytest.raises(ValueError, match="inside the source"):
        run_preprocessing(str(root), str(root / "shards"), SPEC)


def test_local_runner_is_pinned_and_dataflow_options_pass_through():
    assert pipeline_options("FnApiRunner", None).get_all_options()["runner"] == "FnApiRunner"
    options = pipeline_options("FnApiRunner", ["--runner=DataflowRunner", "--project=p"])
    assert options.get_all_options()["runner"] == "DataflowRunner"
    assert options.get_all_options()["project"] == "p"


def test_steps_read_top_to_bottom(tmp_path):
    import apache_beam as beam  # noqa: PLC0415

    root = phantom_folder(tmp_path / "images", broken=True)
    pipeline = beam.Pipeline(options=pipeline_options("FnApiRunner", None))
    build_pipeline(pipeline, plan_preprocessing(str(root)), SPEC, str(tmp_path / "out"), 2)
    names = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    for step in ("ListInputFiles", "ReadFiles", "DecodeImages", "PreprocessImages",
                 "BatchExamples", "EncodeExamples", "WriteTrainShards",
                 "WriteValidationShards", "WriteRejections", "CountExamples", "WriteManifest"):
        assert step in names, step


def test_read_and_decode_steps_reject_with_reason_codes(tmp_path):
    missing = datasets.LabeledFile(str(tmp_path / "absent.dcm"), "absent.dcm", 0, "train")
    with pytest.raises(ImageRejected) as rejected:
        read_file(missing, 1024)
    assert rejected.value.reason.value == "unreadable_uri"
    large = tmp_path / "large.png"
    large.write_bytes(b"\x89PNG" + bytes(2048))
    with pytest.raises(ImageRejected) as rejected:
        read_file(datasets.LabeledFile(str(large), "large.png", 0, "train"), 1024)
    assert rejected.value.reason.value == "file_too_large"
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    item = read_file(datasets.LabeledFile(str(truncated), "truncated.png", 0, "train"), 1 << 20)
    with pytest.raises(ImageRejected) as rejected:
        decode_file(item, ImageLimits())
    assert rejected.value.reason.value in ("undecodable_pixel_data", "not_an_image")


def test_an_unexpected_decoder_failure_rejects_the_file_instead_of_stopping_the_run(
        tmp_path, monkeypatch):
    def crash(*_args):
        raise RuntimeError("a decoder bug")

    monkeypatch.setattr(datasets, "decode_image_bytes", crash)
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    item = read_file(datasets.LabeledFile(str(path), "image.png", 0, "train"), 1 << 20)
    with pytest.raises(ImageRejected) as rejected:
        decode_file(item, ImageLimits())
    assert rejected.value.reason.value == "undecodable_pixel_data"
    assert "RuntimeError" in rejected.value.message and "bug" not in rejected.value.message


@pytest.mark.slow
def test_the_recipe_gates_a_dicom_folder_with_a_labels_csv(tmp_path):
    """Preprocessing, training, evaluation and the gate all read the CSV's labels."""
    from batch_training.promotion import GateDecision  # noqa: PLC0415
    from batch_training.recipe import run_recipe  # noqa: PLC0415
    from batch_training.train import TrainingConfig  # noqa: PLC0415

    from batch_training.roles import HOLDOUT, DataRoles, role_key  # noqa: PLC0415

    root, rng = tmp_path / "archive", np.random.default_rng(11)
    rows = ["path,label,split,group"]
    for index in range(24):
        label = ("normal", "lesion")[index % 2]
        write_phantom(root / "studies" / f"image_{index:02d}.dcm", rng, label == "lesion",
                       index)
        rows.append(f"studies/image_{index:02d}.dcm,{label},{'val' if index < 8 else 'train'},"
                    f"patient-{index // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    config = TrainingConfig(data=str(root), model_registry=str(tmp_path / "registry"),
                            model_name="csv-model", height=28, width=28, epochs=1,
                            batch_size=8, augmentation=False, calibration_fraction=0.0,
                            holdout_fraction=0.4, threshold=0.5,
                            class_names=("normal", "lesion"))
    decision = run_recipe(config, labels_csv=str(root / "labels.csv"), progress=False,
                          work_dir=str(tmp_path))
    assert isinstance(decision, GateDecision)
    # The gate judged the training rows whose patient drew the holdout, nothing else.
    patients = [f"patient-{index // 2}" for index in range(8, 24)]
    roles = DataRoles(0.0, 0.4).assign([role_key("", group) for group in patients])
    assert decision.split == HOLDOUT
    assert decision.candidate["n"] == int((roles == HOLDOUT).sum()) > 0

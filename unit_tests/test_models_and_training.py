"""Architectures, training data loading, and one real training run registered end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from batch_training import datasets
from batch_training.models import ARCHITECTURES, build_model
from batch_training.evaluation import evaluate_version
from batch_training.labeled import LabeledData
from batch_training.roles import CALIBRATION, FIT, HOLDOUT, DataRoles, role_key
from batch_training.train import (TrainingConfig, augmentation, carve_splits, class_weights,
                                  promote, train_and_register)
from streaming.contracts import validation
from streaming.local import phantoms
from streaming.imaging.decoding import decode_image_bytes
from streaming.local.reference_data import PNEUMONIAMNIST, shared_data_dir
from streaming.imaging.preprocessing import PreprocessingSpec, preprocess
from streaming.imaging.types import ImageLimits
from streaming.modeling.loading import load_model
from streaming.modeling.metadata import ModelMetadata
from streaming.modeling.registry import ModelRegistry
from unit_tests.conftest import phantom_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
PHANTOM_SIZE = 64
MODEL_NAME = "phantom-lesion"



def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    metric = keras.metrics.AUC(num_thresholds=1000)
    metric.update_state(labels, scores)
    return float(metric.result())


# -- architectures ---------------------------------------------------------------------

@pytest.mark.parametrize("architecture, input_shape, num_classes", [
    ("compact_cnn", (28, 28, 1), 2),
    ("compact_cnn", (64, 64, 1), 3),
    ("residual_net", (28, 28, 1), 2),
    ("residual_net", (64, 64, 3), 2),
])
def test_small_architectures_map_images_to_class_probabilities(architecture, input_shape,
                                                               num_classes):
    model = build_model(architecture, input_shape, num_classes)
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == (None, num_classes)
    probabilities = np.asarray(model.predict_on_batch(np.zeros((2, *input_shape), "float32")))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_resnet50_builds_offline_at_224():
    model = build_model("resnet50", (224, 224, 3), 2)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 2)
    assert model.count_params() > 20_000_000


def test_build_model_names_the_known_architectures_when_asked_for_another():
    with pytest.raises(ValueError) as error:
        build_model("vgg16", (28, 28, 1), 2)
    for name in ARCHITECTURES:
        assert name in str(error.value)


# -- npz ---------------------------------------------------------------------------------

def _write_npz(path: Path, **extra) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 256, (10, 20, 20), dtype=np.uint8),
             train_labels=(np.arange(10) % 2).reshape(-1, 1),
             val_images=rng.integers(0, 256, (4, 20, 20), dtype=np.uint8),
             val_labels=np.array([0, 1, 1, 0]), **extra)
    return path


def test_load_npz_preprocesses_images_and_names_classes_neutrally(tmp_path):
    path = _write_npz(tmp_path / "small.npz")
    spec = PreprocessingSpec(28, 28, 1)
    data = datasets.load_npz(path, spec)
    assert data.train_x.shape == (10, 28, 28, 1) and data.train_x.dtype == np.float32
    assert data.val_x.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(data.train_y, np.arange(10) % 2)
    np.testing.assert_array_equal(data.val_y, [0, 1, 1, 0])
    assert data.classes == ("class_0", "class_1")
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    with np.load(path) as arrays:
        expected = preprocess(arrays["val_images"][2].astype(np.float32) / 255, spec)
    np.testing.assert_allclose(data.val_x[2], expected, atol=1e-6)
    assert data.fingerprint == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert data.skipped == 0


def test_load_npz_class_names_from_the_file_or_the_caller(tmp_path):
    spec = PreprocessingSpec(20, 20, 3)
    named = _write_npz(tmp_path / "named.npz", class_names=np.array(["normal", "pneumonia"]))
    assert datasets.load_npz(named, spec).classes == ("normal", "pneumonia")
    assert datasets.load_npz(named, spec).train_x.shape == (10, 20, 20, 3)
    with pytest.raises(ValueError, match="contradict"):
        datasets.load_npz(named, spec, class_names=["pneumonia", "normal"])
    unnamed = _write_npz(tmp_path / "unnamed.npz")
    assert datasets.load_npz(unnamed, spec, class_names=["a", "b"]).classes == ("a", "b")


def test_pneumoniamnist_loads_with_its_published_split_sizes():
    path = shared_data_dir() / PNEUMONIAMNIST
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared PneumoniaMNIST file is not shipped with "
                    "the repository; set MEDIMG_SHARED_DATA to the folder that holds it)")
    data = datasets.load_labeled_data(path, PreprocessingSpec(28, 28, 1))
    assert data.train_x.shape == (4708, 28, 28, 1)
    assert data.val_x.shape == (524, 28, 28, 1)
    assert np.bincount(data.train_y).tolist() == [1214, 3494]
    assert np.bincount(data.val_y).tolist() == [135, 389]
    assert data.classes == ("class_0", "class_1")
    assert data.fingerprint == (
        "sha256:7b4a6977c121db287270afe9b2080057c84653297ec75bc52903ba473ac2649d")


# -- folder ------------------------------------------------------------------------------

def test_load_folder_decodes_every_image_through_the_serving_decoder(tmp_path):
    root = phantom_folder(tmp_path / "images", broken=True)
    spec = PreprocessingSpec(32, 32, 1)
    data = datasets.load_labeled_data(root, spec)
    assert data.classes == ("lesion", "normal")  # sorted folder names
    assert data.train_x.shape == (6, 32, 32, 1) and data.val_x.shape == (4, 32, 32, 1)
    assert sorted(data.train_y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.skipped == 1
    dicom = root / "validation" / "lesion" / "0.dcm"
    decoded = decode_image_bytes(dicom.read_bytes(), "application/dicom", ImageLimits())
    np.testing.assert_array_equal(data.val_x[0], preprocess(decoded.pixels, spec))

    ordered = datasets.load_folder(root, spec, class_names=["normal", "lesion"])
    assert ordered.classes == ("normal", "lesion")
    np.testing.assert_array_equal(ordered.train_y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ordered.train_x[:3], data.train_x[3:])  # the normal images


def test_folder_fingerprint_is_stable_and_follows_the_bytes(tmp_path):
    root = phantom_folder(tmp_path / "images")
    spec = PreprocessingSpec(28, 28, 1)
    first = datasets.load_folder(root, spec).fingerprint
    assert first.startswith("sha256:")
    assert datasets.load_folder(root, spec).fingerprint == first
    (root / "train" / "normal" / "notes.txt").write_text("edited, still not an image")
    assert datasets.load_folder(root, spec).fingerprint == first
    png = root / "validation" / "normal" / "1.png"
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(png)
    assert datasets.load_folder(root, spec).fingerprint != first


def test_folder_splits_must_agree_on_classes(tmp_path):
    root = phantom_folder(tmp_path / "images")
    (root / "validation" / "effusion").mkdir()
    with pytest.raises(ValueError, match="both splits"):
        datasets.load_folder(root, PreprocessingSpec(28, 28, 1))


def test_load_labeled_data_says_what_it_accepts(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n")
    with pytest.raises(ValueError, match="npz"):
        datasets.load_labeled_data(table, PreprocessingSpec(28, 28, 1))
    with pytest.raises(ValueError, match="npz"):
        datasets.load_labeled_data(tmp_path / "missing", PreprocessingSpec(28, 28, 1))


# -- training ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run on decoded phantoms, registered in a fresh registry."""
    workdir = tmp_path_factory.mktemp("training")
    data = phantoms.write_phantom_npz(workdir / "phantoms.npz", n_train=320, n_val=96,
                                      size=PHANTOM_SIZE, seed=21)
    # Small data: minimum counts and the urgent operating point scaled down to match.
    config = TrainingConfig(data=str(data), model_registry=str(workdir / "registry"),
                            model_name=MODEL_NAME, height=PHANTOM_SIZE, width=PHANTOM_SIZE,
                            epochs=8, batch_size=32, seed=5, calibration_fraction=0.2,
                            min_calibration_per_class=15, urgent_specificity=0.8)
    record = train_and_register(config, progress=False)
    return config, record


@pytest.mark.slow
def test_first_training_registers_version_1_and_sets_production(trained):
    config, record = trained
    registry = ModelRegistry(config.model_registry)
    assert record.version == "1"
    assert registry.versions(MODEL_NAME) == ["1"]
    assert registry.production(MODEL_NAME) == "1"
    stored = json.loads((Path(registry.version_uri(MODEL_NAME, "1")) / "metadata.json")
                        .read_text())
    assert validation.errors(validation.MODEL_METADATA, stored) == []
    metadata = ModelMetadata.from_dict(stored)
    assert metadata.classes == ("normal", "lesion") and metadata.positive_class == "lesion"
    assert metadata.preprocessing.input_shape == (PHANTOM_SIZE, PHANTOM_SIZE, 1)
    assert metadata.applicability.modalities == ("CR", "DX")
    assert stored["data_fingerprint"] == "sha256:" + hashlib.sha256(
        Path(config.data).read_bytes()).hexdigest()
    assert stored["keras_version"] == keras.__version__
    assert stored["training"]["config"]["architecture"] == "compact_cnn"
    assert stored["metrics"]["val_auc"] >= 0.8


@pytest.mark.slow
def test_registered_model_finds_lesions_in_unseen_phantoms(trained):
    config, _ = trained
    loaded = load_model(ModelRegistry(config.model_registry), MODEL_NAME, "1")
    pixels, labels = phantoms.phantom_training_set(120, size=PHANTOM_SIZE, seed=99)
    batch = np.stack([preprocess(p, loaded.metadata.preprocessing) for p in pixels])
    lesion_scores = loaded.predict(batch)[:, loaded.metadata.classes.index("lesion")]
    assert _auc(labels, lesion_scores) >= 0.8


@pytest.mark.slow
def test_second_training_gets_version_2_and_leaves_production(trained, tmp_path):
    # A copy of the shared registry: the tests reading version 1 must not depend on order.
    shared, _ = trained
    config = dataclasses.replace(shared, model_registry=str(tmp_path / "registry"))
    shutil.copytree(shared.model_registry, config.model_registry)
    small = phantoms.write_phantom_npz(tmp_path / "small.npz", n_train=32, n_val=16,
                                       size=PHANTOM_SIZE, seed=3)
    # No calibration split: the configured threshold is kept.
    second = train_and_register(
        dataclasses.replace(config, data=str(small), epochs=1, calibration_fraction=0.0,
                            threshold=0.4), progress=False)
    registry = ModelRegistry(config.model_registry)
    assert second.version == "2"
    assert second.threshold == 0.4 and second.extra["metrics"]["calibration"] is None
    assert second.extra["training"]["calibration_images"] == 0
    assert registry.versions(MODEL_NAME) == ["1", "2"]
    assert registry.production(MODEL_NAME) == "1"
    assert promote(registry, second, "never") is False
    assert promote(registry, second, "always") is True
    assert registry.production(MODEL_NAME) == "2"


_PREDICT_ON_JAX = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    from streaming.modeling.loading import load_model
    from streaming.modeling.registry import ModelRegistry
    registry_root, name, batch_path, out_path = sys.argv[1:]
    assert keras.backend.backend() == "jax", keras.backend.backend()
    loaded = load_model(ModelRegistry(registry_root), name, "1")
    np.save(out_path, loaded.predict(np.load(batch_path)))
""")


@pytest.mark.slow
def test_model_trained_on_tensorflow_predicts_the_same_on_jax(trained, tmp_path):
    config, _ = trained
    loaded = load_model(ModelRegistry(config.model_registry), MODEL_NAME, "1")
    pixels, _ = phantoms.phantom_training_set(8, size=PHANTOM_SIZE, seed=123)
    batch = np.stack([preprocess(p, loaded.metadata.preprocessing) for p in pixels])
    np.save(tmp_path / "batch.npy", batch)
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join(filter(None, [
                       str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", _PREDICT_ON_JAX, config.model_registry, MODEL_NAME,
         str(tmp_path / "batch.npy"), str(tmp_path / "jax.npy")],
        env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), loaded.predict(batch), atol=1e-4)


# -- the recipe's parts ------------------------------------------------------------------

def _labeled(keys: list[str]) -> LabeledData:
    count = len(keys)
    return LabeledData(np.arange(count, dtype=np.float32).reshape(count, 1, 1, 1),
                       np.arange(count) % 2, np.zeros((2, 1, 1, 1), np.float32),
                       np.array([0, 1]), ("a", "b"), "sha256:x", train_keys=tuple(keys))


def test_roles_divide_the_training_images_disjointly_stably_and_by_fraction():
    keys = [role_key(f"{i:064x}") for i in range(4000)]
    roles = DataRoles(calibration_fraction=0.15, holdout_fraction=0.15)
    assigned = roles.assign(keys)
    shares = {role: float(np.mean(assigned == role)) for role in (FIT, CALIBRATION, HOLDOUT)}
    assert shares[HOLDOUT] == pytest.approx(0.15, abs=0.02)
    assert shares[CALIBRATION] == pytest.approx(0.15, abs=0.02)
    np.testing.assert_array_equal(DataRoles(0.15, 0.15).assign(keys), assigned)  # any run
    # A later model with a smaller calibration share never fits on this holdout.
    later = DataRoles(calibration_fraction=0.05, holdout_fraction=0.15).assign(keys)
    np.testing.assert_array_equal(later == HOLDOUT, assigned == HOLDOUT)
    splits = carve_splits(_labeled(keys), roles)
    rows = [set(part.ravel().tolist()) for part in
            (splits.fit_x, splits.calibration_x, splits.holdout_x)]
    assert sum(len(r) for r in rows) == 4000 and len(set().union(*rows)) == 4000


def test_images_of_one_group_never_sit_on_both_sides():
    # 200 patients with 5 images each: every patient's images share one role.
    keys = [role_key(f"{i:064x}", group=f"patient-{i // 5}") for i in range(1000)]
    assigned = DataRoles(0.2, 0.2).assign(keys)
    for patient in range(200):
        assert len(set(assigned[patient * 5:(patient + 1) * 5])) == 1
    assert len(set(assigned)) == 3


def test_labels_csv_groups_set_the_role_keys_and_the_validation_split(tmp_path):
    rows = ["path,label,group"] + [f"{i}.png,{('normal', 'lesion')[i % 2]},p{i // 4}"
                                   for i in range(40)]
    for i in range(40):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    listing = datasets.list_labels_csv(tmp_path, tmp_path / "labels.csv",
                                       validation_fraction=0.3)
    for patient in range(10):
        assert len({f.split for f in listing.files if f.group == f"p{patient}"}) == 1
    data = datasets.load_labeled_data(tmp_path, PreprocessingSpec(8, 8, 1),
                                      labels_csv=tmp_path / "labels.csv")
    assert all(key.startswith("group:p") for key in data.train_keys)


def test_dicom_images_of_one_patient_share_a_role_key_that_hides_the_patient(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "validation"):
        for label in phantoms.PHANTOM_CLASSES:
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(3):
                phantoms.write_dicom(
                    tmp_path / split / label / f"{index}.dcm",
                    phantoms.render_chest_phantom(rng, 32, lesion=label == "lesion"),
                    modality="CR", study_uid=f"2.25.{index + 7}", series_uid="2.25.99",
                    sop_uid=f"2.25.{index + 7}.{label == 'lesion':d}",
                    patient_id=f"MRN-{index}")
    data = datasets.load_labeled_data(tmp_path, PreprocessingSpec(32, 32, 1))
    # Patient MRN-0 has a normal and a lesion image in train: one key for both.
    assert len(set(data.train_keys)) == 3 and len(data.train_keys) == 6
    assert all(key.startswith("group:dicom-patient:") for key in data.train_keys)
    assert not any("MRN" in key for key in data.train_keys)
    split = datasets.load_split(tmp_path, PreprocessingSpec(32, 32, 1), "train")
    assert sorted(split.keys) == sorted(data.train_keys)


def test_an_empty_fitting_share_is_refused():
    with pytest.raises(ValueError, match="fitting"):
        DataRoles(calibration_fraction=0.45, holdout_fraction=0.45)


def test_threshold_is_fitted_to_the_target_plus_the_margin_at_most_one():
    config = TrainingConfig(data="x.npz", model_registry="r")
    assert config.calibration_target == pytest.approx(0.98)


@pytest.mark.parametrize("positives, expected", [
    (2000, 0.98),        # many positives: the margin decides
    (100, 0.99),         # fewer: 99 of 100 is the least whose exact 95% bound >= 0.95
    (40, 1.0),           # too few for any bound to reach 0.95: every positive
])
def test_fitted_sensitivity_rises_until_its_lower_bound_reaches_the_target(positives, expected):
    from batch_training.evaluation import sensitivity_lower_bound  # noqa: PLC0415
    from batch_training.train import fitted_sensitivity  # noqa: PLC0415
    config = TrainingConfig(data="x.npz", model_registry="r")
    fitted = fitted_sensitivity(positives, config)
    assert fitted == pytest.approx(expected, abs=1e-9)
    if fitted < 1.0:
        found = round(fitted * positives)
        assert sensitivity_lower_bound(found, positives) >= 0.95
        assert fitted == 0.98 or sensitivity_lower_bound(found - 1, positives) < 0.95
    exact = dataclasses.replace(config, target_sensitivity=0.99, sensitivity_margin=0.05)
    assert exact.calibration_target == 1.0


def test_class_weights_are_off_by_default_and_balanced_when_asked_for():
    # Off: weights would bend the probabilities the thresholds are read on.
    config = TrainingConfig(data="x.npz", model_registry="r")
    assert class_weights(np.array([0, 1, 1, 1]), config) is None
    weighted = dataclasses.replace(config, class_weighting=True)
    assert class_weights(np.array([0, 1, 1, 1]), weighted) == pytest.approx({0: 2.0, 1: 2 / 3})


def test_augmentation_changes_images_only_in_training_and_never_flips_by_default():
    config = TrainingConfig(data="x.npz", model_registry="r", height=32, width=32)
    layers = augmentation(config)
    names = [type(layer).__name__ for layer in layers.layers]
    assert names == ["RandomRotation", "RandomTranslation", "RandomZoom", "RandomContrast"]
    images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(layers(images, training=False)), images)
    assert not np.allclose(np.asarray(layers(images, training=True)), images)
    flipping = augmentation(dataclasses.replace(config, horizontal_flip=True))
    assert flipping.layers[-1].get_config()["mode"] == "horizontal"


@pytest.mark.parametrize("overrides, message", [
    ({"calibration_fraction": 0.5}, "calibration_fraction"),
    ({"target_sensitivity": 0.0}, "target_sensitivity"),
    ({"learning_rate_schedule": "step"}, "learning_rate_schedule"),
    ({"sensitivity_margin": -0.01}, "sensitivity_margin"),
    ({"holdout_fraction": 0.5}, "holdout_fraction"),
    ({"urgent_specificity": 1.0}, "urgent_specificity"),
    ({"min_calibration_per_class": 0}, "min_calibration_per_class"),
])
def test_training_config_refuses_impossible_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(data="x.npz", model_registry="r", **overrides)


# -- what a trained version holds ------------------------------------------------------------

def _version_dir(config) -> Path:
    return Path(ModelRegistry(config.model_registry).version_uri(MODEL_NAME, "1"))


def _phantom_batch(metadata, n=8, seed=123) -> np.ndarray:
    pixels, _ = phantoms.phantom_training_set(n, size=PHANTOM_SIZE, seed=seed)
    return np.stack([preprocess(p, metadata.preprocessing) for p in pixels])


@pytest.mark.slow
def test_version_holds_every_form_of_the_model_and_the_report(trained):
    config, _ = trained
    version_dir = _version_dir(config)
    for name in ("model.keras", "architecture.json", "model.weights.h5", "saved_model.pb",
                 "metadata.json", "history.json", "report/report.md"):
        assert (version_dir / name).is_file(), name
    assert (version_dir / "variables" / "variables.index").is_file()
    for name in ("roc_curve.png", "calibration.png", "confusion_matrix.png",
                 "training_curves.png"):
        with Image.open(version_dir / "report" / name) as image:
            image.verify()


@pytest.mark.slow
def test_threshold_is_calibrated_on_held_out_training_images(trained):
    config, record = trained
    metrics, training = record.extra["metrics"], record.extra["training"]
    calibration = metrics["calibration"]
    assert record.threshold == calibration["threshold"] == metrics["validation"]["threshold"]
    assert 0.0 < record.threshold < 1.0
    assert metrics["target_sensitivity"] == 0.95
    # Fitted with the margin, and on so few positives higher still, so that the
    # lower confidence bound reaches the target (see fitted_sensitivity).
    assert calibration["fitted_sensitivity"] >= 0.98
    assert calibration["sensitivity"] >= calibration["fitted_sensitivity"]
    assert calibration["too_few"] is None and calibration["min_per_class"] == 15
    # Roles: fitting, calibration and the gate's holdout share the 320 training
    # phantoms; early stopping has the validation split to itself.
    assert training["calibration_images"] == calibration["n"]
    assert (training["train_images"] + training["calibration_images"]
            + training["holdout_images"]) == 320
    assert training["holdout_images"] == metrics["holdout"]["n"] > 0
    assert record.extra["data_roles"]["holdout_fraction"] == 0.15
    assert training["val_images"] == 96 and metrics["validation"]["n"] == 96
    assert metrics["val_auc"] == metrics["validation"]["auc"]
    assert metrics["val_accuracy"] == metrics["validation"]["accuracy_at_0_5"]


@pytest.mark.slow
def test_urgent_threshold_is_set_for_a_specificity_on_the_calibration_split(trained):
    config, record = trained
    urgent = record.extra["metrics"]["calibration"]["urgent"]
    assert urgent["split"] == "calibration" and urgent["target_specificity"] == 0.8
    assert record.urgent_threshold == urgent["threshold"] >= record.threshold
    assert urgent["threshold"] != config.urgent_threshold  # not the fixed 0.9
    assert urgent["specificity"] >= 0.8 and urgent["negatives"] >= urgent["min_negatives"] == 25


@pytest.mark.slow
def test_early_stopping_kept_the_epoch_with_the_best_validation_auc(trained):
    config, record = trained
    history = json.loads((_version_dir(config) / "history.json").read_text())
    best = record.extra["training"]["best_epoch"]
    assert best == int(np.argmax(history["val_auc"])) + 1
    assert record.extra["training"]["epochs_trained"] == len(history["loss"])


@pytest.mark.slow
def test_registered_metrics_are_what_evaluation_measures(trained):
    config, record = trained
    result, _, _ = evaluate_version(config.model_registry, MODEL_NAME, "1", config.data, "val")
    stored = record.extra["metrics"]["validation"]
    assert result.threshold == stored["threshold"]
    assert (result.tp, result.fn, result.fp, result.tn) == (
        stored["tp"], stored["fn"], stored["fp"], stored["tn"])
    assert result.auc == pytest.approx(stored["auc"], abs=1e-6)


@pytest.mark.slow
def test_architecture_and_weights_rebuild_the_served_model(trained):
    config, _ = trained
    version_dir = _version_dir(config)
    loaded = load_model(ModelRegistry(config.model_registry), MODEL_NAME, "1")
    rebuilt = keras.models.model_from_json((version_dir / "architecture.json").read_text())
    rebuilt.load_weights(version_dir / "model.weights.h5")
    batch = _phantom_batch(loaded.metadata)
    np.testing.assert_allclose(np.asarray(rebuilt.predict_on_batch(batch)),
                               loaded.predict(batch), atol=1e-6)
    # Augmentation trains the model but is not part of what is served.
    assert not any(layer.name == "augmentation" or type(layer).__name__.startswith("Random")
                   for layer in loaded.keras_model.layers)


@pytest.mark.slow
def test_saved_model_export_serves_the_same_probabilities(trained):
    import tensorflow as tf  # noqa: PLC0415

    config, _ = trained
    loaded = load_model(ModelRegistry(config.model_registry), MODEL_NAME, "1")
    exported = tf.saved_model.load(str(_version_dir(config)))
    assert "serving_default" in exported.signatures
    batch = _phantom_batch(loaded.metadata)
    np.testing.assert_allclose(np.asarray(exported.serve(tf.constant(batch))),
                               loaded.predict(batch), atol=1e-5)
    outputs = exported.signatures["serving_default"](tf.constant(batch))
    np.testing.assert_allclose(np.asarray(next(iter(outputs.values()))), loaded.predict(batch),
                               atol=1e-5)


def test_each_run_keeps_its_shards_in_its_own_folder_and_removal_is_repeatable(tmp_path):
    from batch_training.recipe import remove_run_folder, run_folder  # noqa: PLC0415
    first = run_folder(str(tmp_path), "scheduled__2026-12-01T00:00:00+00:00")
    second = run_folder(str(tmp_path), "manual__2026-12-01T03:00:00+00:00")
    assert first != second and first.parent == second.parent == tmp_path
    (first / "shards").mkdir(parents=True)
    (first / "shards" / "train-00000-of-00001.tfrecord").write_bytes(b"x")
    second.mkdir()
    assert remove_run_folder(str(tmp_path), "scheduled__2026-12-01T00:00:00+00:00")
    assert not first.exists() and second.exists()
    assert not remove_run_folder(str(tmp_path), "scheduled__2026-12-01T00:00:00+00:00")


def test_a_retried_training_task_returns_the_version_it_registered(tmp_path):
    from batch_training.recipe import train  # noqa: PLC0415
    data = phantoms.write_phantom_npz(tmp_path / "tiny.npz", n_train=48, n_val=16, size=64,
                                      seed=2)
    config = TrainingConfig(data=str(data), model_registry=str(tmp_path / "registry"),
                            model_name=MODEL_NAME, epochs=1, batch_size=16,
                            augmentation=False, calibration_fraction=0.0)
    marker = tmp_path / "run" / "candidate.json"
    first = train(config, str(data), progress=False, marker=str(marker))
    assert train(config, str(data), progress=False, marker=str(marker)) == first
    assert ModelRegistry(config.model_registry).versions(MODEL_NAME) == [first]
    assert json.loads(marker.read_text()) == {"version": first}

"""Evaluation: operating threshold, metrics, a registered version on a data split, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from batch_training import evaluation
from batch_training.evaluation import (EvaluationResult, evaluate_scores, evaluate_version,
                                       operating_threshold, positive_scores, run_evaluate,
                                       write_report)
from streaming.imaging.preprocessing import preprocess
from streaming.modeling.loading import load_model
from streaming.modeling.registry import ModelRegistry, RegistryError
from unit_tests.conftest import build_small_model, register

MODEL = "eval-cnn"
CLASSES = ("normal", "pneumonia")


# -- operating threshold -------------------------------------------------------------------

LABELS = [0, 0, 1, 1, 1, 1]
SCORES = [0.1, 0.6, 0.3, 0.5, 0.8, 0.9]  # positives, highest first: 0.9, 0.8, 0.5, 0.3


@pytest.mark.parametrize("target, expected", [
    (0.25, 0.9),   # 1 of 4 positives
    (0.5, 0.8),    # 2 of 4
    (0.75, 0.5),   # 3 of 4
    (0.95, 0.3),   # all 4: 3 of 4 would be 0.75 < 0.95
    (1.0, 0.3),
])
def test_operating_threshold_is_the_highest_reaching_the_target_sensitivity(target, expected):
    assert operating_threshold(LABELS, SCORES, target) == expected


def test_operating_threshold_counts_tied_scores_as_positive_together():
    labels = [1, 1, 1, 0, 0]
    scores = [0.7, 0.7, 0.4, 0.7, 0.2]
    # At 0.7 both tied positives count: sensitivity 2/3 >= 0.5 (more than the bare target).
    assert operating_threshold(labels, scores, 0.5) == 0.7
    assert operating_threshold(labels, scores, 0.7) == 0.4
    result = evaluate_scores(labels, scores, 0.7, "pneumonia")
    assert (result.tp, result.fp) == (2, 1)  # the tied negative is positive too


def test_operating_threshold_is_a_threshold_serving_applies_with_score_at_or_above():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(labels * 0.3 + rng.normal(0.4, 0.2, 400), 0, 1).astype(np.float32)
    threshold = operating_threshold(labels, scores, 0.95)
    sensitivity = np.mean(scores[labels == 1] >= threshold)
    assert sensitivity >= 0.95
    assert np.mean(scores[labels == 1] > threshold) < 0.95  # any higher one falls short


@pytest.mark.parametrize("target", [0.0, -0.1, 1.01])
def test_operating_threshold_refuses_an_impossible_target(target):
    with pytest.raises(ValueError, match="target_sensitivity"):
        operating_threshold(LABELS, SCORES, target)


def test_operating_threshold_needs_positive_images():
    with pytest.raises(ValueError, match="no positive images"):
        operating_threshold([0, 0, 0], [0.1, 0.2, 0.3])


# -- metrics -------------------------------------------------------------------------------

def test_threshold_for_specificity_is_the_lowest_keeping_the_target_share_of_negatives():
    labels = [0] * 10 + [1] * 2
    scores = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.7, 0.9, 0.8, 0.95]
    threshold = evaluation.threshold_for_specificity(labels, scores, 0.8)
    negatives = np.array(scores[:10])
    assert threshold == 0.7 and np.mean(negatives < threshold) == 0.8
    assert np.mean(negatives < 0.4) < 0.8  # any lower threshold falls short
    # A target no score meets: above every score, so nothing is urgent.
    assert evaluation.threshold_for_specificity([0, 0, 1], [0.99, 1.0, 1.0], 0.9) == 1.0


def test_sensitivity_lower_bound_is_the_exact_one_sided_bound():
    # Clopper-Pearson for all positives found: alpha ** (1 / n).
    assert evaluation.sensitivity_lower_bound(36, 36) == pytest.approx(0.05 ** (1 / 36))
    assert evaluation.sensitivity_lower_bound(97, 100) < 0.97 < evaluation.sensitivity_lower_bound(
        970, 1000) + 0.02
    assert evaluation.sensitivity_lower_bound(970, 1000) > evaluation.sensitivity_lower_bound(
        97, 100)


def test_paired_auc_difference_is_exact_for_identical_models_and_negative_for_worse():
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 200)
    good = labels + rng.normal(0, 0.7, len(labels))
    worse = labels + rng.normal(0, 2.0, len(labels))
    assert evaluation._auc_by_ranks(labels, good) == pytest.approx(roc_auc_score(labels, good))
    difference, lower = evaluation.paired_auc_difference_bound(labels, good, good, resamples=200)
    assert difference == 0.0 and lower == 0.0
    difference, lower = evaluation.paired_auc_difference_bound(labels, worse, good, resamples=500)
    assert difference == pytest.approx(roc_auc_score(labels, worse) - roc_auc_score(labels, good))
    assert lower < difference < 0


def test_evaluate_scores_matches_a_hand_computed_confusion_matrix():
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    scores = [0.9, 0.45, 0.35, 0.6, 0.2, 0.41, 0.55, 0.1, 0.39, 0.8]
    result = evaluate_scores(labels, scores, threshold=0.4, positive_class="pneumonia")
    # >= 0.4: positives 0.9, 0.45, 0.6, 0.8 (tp 4), 0.35 missed (fn 1);
    #         negatives 0.41, 0.55 flagged (fp 2), 0.2, 0.1, 0.39 cleared (tn 3).
    assert (result.tp, result.fn, result.fp, result.tn) == (4, 1, 2, 3)
    assert result.sensitivity == pytest.approx(4 / 5)
    assert result.specificity == pytest.approx(3 / 5)
    assert result.accuracy == pytest.approx(7 / 10)
    # At 0.5: positives 0.9, 0.6, 0.8 right, 0.45 and 0.35 wrong; negatives all but 0.55.
    assert result.accuracy_at_0_5 == pytest.approx(7 / 10)
    assert result.threshold == 0.4 and result.n == 10 and result.positive_class == "pneumonia"
    # 25 pairs (positive, negative); the positive scores higher in 21 of them.
    assert result.auc == pytest.approx(21 / 25)


def test_auc_of_perfect_inverted_and_random_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert evaluate_scores(labels, perfect, 0.5, "p").auc == 1.0
    assert evaluate_scores(labels, 1 - perfect, 0.5, "p").auc == 0.0
    assert evaluate_scores(labels, np.full(6, 0.5), 0.5, "p").auc == 0.5
    rng = np.random.default_rng(0)
    random_labels = rng.integers(0, 2, 20_000)
    assert evaluate_scores(random_labels, rng.random(20_000), 0.5, "p").auc == pytest.approx(
        0.5, abs=0.02)


def test_to_dict_has_the_json_keys_and_the_confusion_counts():
    document = evaluate_scores([0, 1], [0.2, 0.7], 0.5, "pneumonia").to_dict()
    assert set(evaluation.JSON_KEYS) | {"tn", "fp", "fn", "tp"} <= set(document)
    assert json.loads(json.dumps(document)) == document


def test_evaluate_scores_needs_both_classes():
    with pytest.raises(ValueError, match="no negative images"):
        evaluate_scores([1, 1], [0.2, 0.7], 0.5, "pneumonia")


# -- a registered version on a data split --------------------------------------------------

def _npz(path, size=20, n=24, class_names=CLASSES, splits=("test",), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in splits:
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(path, **arrays, **({"class_names": np.array(class_names)} if class_names else {}))
    return path


@pytest.fixture(scope="module")
def eval_registry(tmp_path_factory):
    """Version 1: a 28x28 model at threshold 0.3 (production); version 2: a 40x40 model."""
    root = tmp_path_factory.mktemp("eval-registry")
    registry = ModelRegistry(str(root))
    staging = tmp_path_factory.mktemp("staging")
    register(registry, staging / "1", build_small_model(seed=1), name=MODEL, threshold=0.3)
    register(registry, staging / "2", build_small_model((40, 40, 1), seed=2), name=MODEL,
             preprocessing={"height": 40, "width": 40, "channels": 1})
    registry.set_pointer(MODEL, "1")
    return registry


def _scores_by_hand(registry, version, path, split="test"):
    loaded = load_model(registry, MODEL, version)
    with np.load(path) as arrays:
        images = arrays[f"{split}_images"]
    batch = np.stack([preprocess(image / 255.0, loaded.metadata.preprocessing)
                      for image in images])
    return loaded.predict(batch)[:, 1]


def test_evaluate_version_defaults_to_production_and_uses_its_threshold(eval_registry, tmp_path):
    data = _npz(tmp_path / "data.npz")
    result, labels, scores = evaluate_version(eval_registry.root, MODEL, None, str(data),
                                              split="test")
    np.testing.assert_array_equal(labels, np.arange(24) % 2)
    np.testing.assert_allclose(scores, _scores_by_hand(eval_registry, "1", data), atol=1e-6)
    assert result == evaluate_scores(labels, scores, 0.3, "pneumonia")
    assert result.n == 24 and result.threshold == 0.3


def test_each_version_is_fed_its_own_preprocessing(eval_registry, tmp_path):
    data = _npz(tmp_path / "data.npz")
    result, _, scores = evaluate_version(eval_registry.root, MODEL, "2", str(data), "test")
    np.testing.assert_allclose(scores, _scores_by_hand(eval_registry, "2", data), atol=1e-6)
    assert result.threshold == 0.5
    *_, images = evaluate_version(eval_registry.root, MODEL, "2", str(data), "test",
                                  with_images=True)
    assert images.shape == (24, 40, 40, 1)


def test_data_classes_are_matched_to_the_model_by_name(eval_registry, tmp_path):
    data = _npz(tmp_path / "data.npz")
    reversed_names = tmp_path / "reversed.npz"
    with np.load(data) as arrays:
        np.savez(reversed_names, test_images=arrays["test_images"],
                 test_labels=1 - arrays["test_labels"], class_names=np.array(CLASSES[::-1]))
    expected, labels, _ = evaluate_version(eval_registry.root, MODEL, "1", str(data), "test")
    result, reversed_labels, _ = evaluate_version(eval_registry.root, MODEL, "1",
                                                  str(reversed_names), "test")
    np.testing.assert_array_equal(reversed_labels, labels)
    assert result == expected


def test_model_and_data_classes_must_agree(eval_registry, tmp_path):
    data = _npz(tmp_path / "data.npz", class_names=("normal", "effusion"))
    with pytest.raises(ValueError, match="differ from the model's"):
        evaluate_version(eval_registry.root, MODEL, "1", str(data), "test")
    unnamed = _npz(tmp_path / "unnamed.npz", class_names=None)
    with pytest.raises(ValueError, match="differ from the model's"):
        evaluate_version(eval_registry.root, MODEL, "1", str(unnamed), "test",
                         class_names=("class_0", "class_1"))


def test_an_npz_without_class_names_is_labeled_in_the_models_class_order(eval_registry,
                                                                         tmp_path):
    named = _npz(tmp_path / "named.npz")
    unnamed = _npz(tmp_path / "unnamed.npz", class_names=None)
    expected, _, _ = evaluate_version(eval_registry.root, MODEL, "1", str(named), "test")
    result, _, _ = evaluate_version(eval_registry.root, MODEL, "1", str(unnamed), "test")
    assert result == expected


def test_a_missing_split_or_file_says_what_exists(eval_registry, tmp_path):
    data = _npz(tmp_path / "data.npz", splits=("train", "val"))
    with pytest.raises(ValueError, match=r"no 'test' split.*train, val"):
        evaluate_version(eval_registry.root, MODEL, "1", str(data), "test")
    with pytest.raises(ValueError, match="neither an .npz file nor a folder"):
        evaluate_version(eval_registry.root, MODEL, "1", str(tmp_path / "absent.npz"), "test")
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no test/ folder; its splits are: train"):
        evaluate_version(eval_registry.root, MODEL, "1", str(tmp_path / "images"), "test")


def test_a_folder_split_is_decoded_like_training_data(eval_registry, tmp_path):
    rng = np.random.default_rng(5)
    for index, name in enumerate(CLASSES * 3):
        folder = tmp_path / "images" / "test" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(
            folder / f"{index}.png")
    result, labels, scores = evaluate_version(eval_registry.root, MODEL, "1",
                                              str(tmp_path / "images"), "test")
    assert result.n == 6 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    loaded = load_model(eval_registry, MODEL, "1")
    first = tmp_path / "images" / "test" / "normal" / "0.png"
    expected = loaded.predict(preprocess(np.asarray(Image.open(first)) / 255.0,
                                         loaded.metadata.preprocessing)[None])[0, 1]
    assert scores[0] == pytest.approx(expected, abs=1e-6)


def test_an_unknown_model_or_no_production_is_a_registry_error(eval_registry, tmp_path):
    data = _npz(tmp_path / "data.npz")
    with pytest.raises(RegistryError, match="no production version"):
        evaluate_version(eval_registry.root, "other-model", None, str(data), "test")


def test_positive_scores_batches_and_takes_the_positive_column(eval_registry):
    loaded = load_model(eval_registry, MODEL, "1")
    images = np.random.default_rng(2).random((7, 28, 28, 1), dtype=np.float32)
    scores = positive_scores(loaded, images, batch_size=3)
    np.testing.assert_allclose(scores, loaded.predict(images)[:, 1], atol=1e-6)


# -- report and command line ---------------------------------------------------------------

def _assert_png(path):
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def test_write_report_draws_valid_pngs_and_a_markdown_report(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    result = evaluate_scores(labels, scores, operating_threshold(labels, scores), "pneumonia")
    history = {"loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.5],
               "auc": [0.7, 0.8, 0.9], "val_auc": [0.7, 0.8, 0.85]}
    written = write_report(result, labels, scores, tmp_path / "report", title="eval-cnn/1",
                           history=history)
    assert set(written) == {"report.md", "roc_curve.png", "calibration.png",
                            "confusion_matrix.png", "training_curves.png"}
    for name, path in written.items():
        assert path.is_file() and path.parent == tmp_path / "report"
        if name.endswith(".png"):
            _assert_png(path)
    report = written["report.md"].read_text()
    assert report.startswith("# eval-cnn/1")
    for name in ("roc_curve.png", "calibration.png", "confusion_matrix.png",
                 "training_curves.png"):
        assert f"]({name})" in report
    assert f"| AUC | {result.auc:.4f} |" in report
    without_history = write_report(result, labels, scores, tmp_path / "plain", title="t")
    assert "training_curves.png" not in without_history


def test_run_evaluate_prints_the_table_and_writes_json_and_report(eval_registry, tmp_path,
                                                                  capsys):
    data = _npz(tmp_path / "data.npz")
    result = run_evaluate(eval_registry.root, MODEL, None, str(data), "test",
                          json_path=str(tmp_path / "metrics.json"),
                          report_dir=str(tmp_path / "report"))
    printed = capsys.readouterr().out
    assert f"{MODEL}/1" in printed and "accuracy at 0.5" in printed
    assert f"{result.auc:.4f}" in printed
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert set(evaluation.JSON_KEYS) <= set(document)
    assert document["n"] == 24 and document["threshold"] == 0.3
    assert document["model"] == f"{MODEL}/1" and document["split"] == "test"
    assert {k: document[k] for k in evaluation.JSON_KEYS} == {
        k: v for k, v in result.to_dict().items() if k in evaluation.JSON_KEYS}
    _assert_png(tmp_path / "report" / "roc_curve.png")
    assert isinstance(result, EvaluationResult)

"""The promotion gate: every way a candidate is rejected, and that a good one is promoted.

Each rejection test has a passing twin (or shares data with one), so a gate that
always promotes and a gate that always rejects both fail here. Decisions are taken
from scores on the same images (``decide``), except the serving-path checks, which
run real models from a real registry.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.special import expit

from batch_training import datasets
from batch_training.promotion import (GateDecision, GatePolicy, ScoredModel,
                                      compared_versions, decide, gate, judge, next_reference,
                                      record_decision)
from batch_training.recipe import check_data
from batch_training.roles import HOLDOUT, DataRoles
from streaming.local import phantoms
from streaming.modeling.registry import PROMOTED, REJECTED, ModelRegistry
from unit_tests.conftest import MODEL_NAME, build_small_model, register

# Small enough to be fast, large enough that the bounds are informative.
POLICY = GatePolicy(min_per_class=30, bootstrap_resamples=500)


def scores_for(labels: np.ndarray, separation: float, seed: int,
               shared: np.ndarray | None = None) -> np.ndarray:
    """Probabilities whose AUC grows with ``separation``; ``shared`` noise pairs models."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, len(labels)) if shared is None else shared
    return expit(separation * (labels - 0.5) * 2 + noise)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.array([1] * 300 + [0] * 300)


def model(labels, separation=3.0, seed=0, threshold=None, version="9", shared=None):
    scores = scores_for(labels, separation, seed, shared)
    if threshold is None:  # the threshold that keeps 99% of positives, as calibration would
        threshold = float(np.quantile(scores[labels == 1], 0.01))
    return ScoredModel(version, scores, threshold)


def test_a_good_first_model_is_promoted(labels):
    promoted, reason, metrics, _ = decide(labels, model(labels), [], POLICY)
    assert promoted, reason
    assert metrics["split"] == HOLDOUT and metrics["n"] == 600
    assert metrics["sensitivity_lower_bound"] >= POLICY.target_sensitivity


def test_sensitivity_short_of_the_target_is_rejected(labels):
    candidate = model(labels)
    # A threshold that misses 8% of positives: the point estimate and its bound fall short.
    candidate.threshold = float(np.quantile(candidate.scores[labels == 1], 0.08))
    promoted, reason, metrics, _ = decide(labels, candidate, [], POLICY)
    assert not promoted and "sensitivity" in reason and "lower bound" in reason
    assert metrics["sensitivity"] < 0.95


def test_sensitivity_judged_by_its_lower_bound_not_the_point_estimate(labels):
    # 97% of positives found: above the target, but on 300 positives the bound is not.
    candidate = model(labels)
    candidate.threshold = float(np.quantile(candidate.scores[labels == 1], 0.03))
    promoted, reason, metrics, _ = decide(labels, candidate, [], POLICY)
    assert metrics["sensitivity"] >= 0.96
    assert not promoted and metrics["sensitivity_lower_bound"] < 0.95, reason


def test_collapsed_specificity_is_rejected(labels):
    candidate = model(labels, threshold=0.0)  # everything positive: sensitivity 1
    promoted, reason, metrics, _ = decide(labels, candidate, [], POLICY)
    assert not promoted and "specificity" in reason and "floor" in reason
    assert metrics["sensitivity"] == 1.0 and metrics["specificity"] == 0.0


def test_first_model_below_the_auc_floor_is_rejected(labels):
    lenient = GatePolicy(min_per_class=30, bootstrap_resamples=500, target_sensitivity=0.5,
                         min_specificity=0.0)
    weak = model(labels, separation=0.4)
    weak.threshold = float(np.quantile(weak.scores[labels == 1], 0.3))
    promoted, reason, metrics, _ = decide(labels, weak, [], lenient)
    assert not promoted and "first model" in reason and metrics["auc"] < 0.8
    strong = model(labels, separation=3.0)
    strong.threshold = weak.threshold
    assert decide(labels, strong, [], lenient)[0]


def test_too_few_images_of_a_class_refuses_to_judge(labels):
    few = np.array([1] * 300 + [0] * 29)
    candidate = model(labels)
    candidate.scores = candidate.scores[:len(few)]
    promoted, reason, _, _ = decide(few, candidate, [], POLICY)
    assert not promoted and reason.startswith("refused to judge") and "29" in reason


def test_thresholds_set_on_too_few_calibration_images_refuse_judgement(labels):
    problem = "the calibration split holds 12 positive and 9 other images"
    promoted, reason, _, _ = decide(labels, model(labels), [], POLICY,
                                    calibration_problem=problem)
    assert not promoted and reason.startswith("refused to judge") and problem in reason


def test_a_worse_auc_than_production_is_rejected_and_an_equal_one_promoted(labels):
    shared = np.random.default_rng(5).normal(0, 1, len(labels))
    production = model(labels, separation=3.0, version="1", shared=shared)
    worse = model(labels, separation=1.5, shared=shared)
    promoted, reason, _, comparisons = decide(labels, worse, [production], POLICY)
    assert not promoted and "AUC" in reason and "version 1" in reason
    assert comparisons[0]["auc_difference_lower_bound"] < -POLICY.auc_tolerance
    # The same model retrained (same scores, other noise in the last digits) passes.
    same = ScoredModel("9", production.scores + 1e-9, production.threshold)
    promoted, reason, _, _ = decide(labels, same, [production], POLICY)
    assert promoted, reason


def test_a_specificity_drop_against_production_is_rejected(labels):
    production = model(labels, version="1")
    # The same scores at a lower threshold: sensitivity still fine, specificity lower
    # by more than the tolerance but above the floor.
    negatives = production.scores[labels == 0]
    production.threshold = float(np.quantile(negatives, 0.95))
    candidate = ScoredModel("9", production.scores, float(np.quantile(negatives, 0.75)))
    promoted, reason, metrics, _ = decide(labels, candidate, [production], POLICY)
    assert metrics["specificity"] >= POLICY.min_specificity
    assert not promoted and "specificity" in reason and "version 1" in reason, reason


def test_a_chain_of_slightly_worse_candidates_cannot_drift_below_the_reference(labels):
    """Each candidate is within the tolerance of the one before, so against production
    alone every one passes and the AUC slides; the reference stops the slide."""
    # Only AUC decides here: a fixed threshold and no specificity limits.
    policy = GatePolicy(min_per_class=30, bootstrap_resamples=500, target_sensitivity=0.8,
                        min_specificity=0.0, specificity_tolerance=0.45)
    shared = np.random.default_rng(7).normal(0, 1, len(labels))
    chain = [model(labels, 1.7 - 0.06 * i, version=str(i + 1), shared=shared, threshold=0.3)
             for i in range(8)]
    auc = {m.version: decide(labels, m, [], policy)[2]["auc"] for m in chain}
    assert all(decide(labels, later, [earlier], policy)[0]
               for earlier, later in itertools.pairwise(chain)), "each step is within tolerance"
    assert auc[chain[-1].version] < auc["1"] - 2 * policy.auc_tolerance  # the slide

    production, reference, promoted_versions = chain[0], chain[0], []
    for candidate in chain[1:]:
        others = [production] + ([reference] if reference is not production else [])
        promoted, _, metrics, comparisons = decide(labels, candidate, others, policy)
        if promoted:
            best = next_reference(candidate.version, metrics["auc"], comparisons)
            reference = next(m for m in chain if m.version == best)
            production = candidate
            promoted_versions.append(candidate.version)
    assert promoted_versions and len(promoted_versions) < len(chain) - 1
    assert reference.version == "1"
    assert auc[production.version] >= auc["1"] - 2 * policy.auc_tolerance


# -- with a registry: serving path, references, recording --------------------------------

@pytest.fixture
def judged_npz(tmp_path):
    """Chest phantoms (uint8, 28x28) in a MedMNIST-style npz with the model's classes."""
    rng = np.random.default_rng(3)
    arrays = {}
    for split, count in (("train", 120), ("val", 20)):
        labels = rng.permutation(np.arange(count) % 2)
        arrays[f"{split}_images"] = np.stack([
            np.round(phantoms.render_chest_phantom(rng, 28, lesion=bool(label)) * 255)
            for label in labels]).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    path = tmp_path / "judged.npz"
    np.savez(path, **arrays, class_names=np.array(["normal", "pneumonia"]))
    return path


@pytest.fixture
def judged_dicom_folder(tmp_path):
    """train/ and validation/ folders of RLE MONOCHROME1 chest DICOMs, one patient each:
    the decoder's inversion and RLE paths run on both sides of the skew check."""
    rng = np.random.default_rng(8)
    root = tmp_path / "dicom"
    for split, count in (("train", 40), ("validation", 6)):
        for label in ("normal", "pneumonia"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                uid = f"2.25.{len(split)}{index}{label == 'pneumonia':d}"
                phantoms.write_dicom(
                    root / split / label / f"{index}.dcm",
                    phantoms.render_chest_phantom(rng, 48, lesion=label == "pneumonia"),
                    modality="CR", study_uid=uid, series_uid=f"{uid}.1", sop_uid=f"{uid}.1.1",
                    transfer_syntax="rle", photometric="MONOCHROME1",
                    patient_id=f"P-{split}-{label}-{index}")
    return root


ROLES = DataRoles(calibration_fraction=0.1, holdout_fraction=0.4).to_dict()
SMALL = GatePolicy(min_per_class=5, bootstrap_resamples=200, serving_samples=4)


def test_a_model_the_serving_loader_refuses_is_rejected(tmp_path, judged_npz):
    registry = ModelRegistry(str(tmp_path / "registry"))
    # Linear outputs: not probabilities, which the serving loader refuses.
    register(registry, tmp_path / "s1", build_small_model(activation="linear", seed=2),
             data_roles=ROLES)
    decision = gate(registry.root, MODEL_NAME, "1", str(judged_npz), SMALL)
    assert not decision.promoted and decision.reason.startswith("serving path")
    assert registry.status(MODEL_NAME, "1")["state"] == REJECTED
    assert registry.production(MODEL_NAME) is None


@pytest.mark.parametrize("source", ["judged_npz", "judged_dicom_folder"])
def test_skew_between_the_training_and_the_job_loader_is_caught(tmp_path, source, request,
                                                                monkeypatch):
    data = request.getfixturevalue(source)
    registry = ModelRegistry(str(tmp_path / "registry"))
    register(registry, tmp_path / "s1", build_small_model(seed=4), data_roles=ROLES)
    clean = judge(registry.root, MODEL_NAME, "1", str(data), SMALL)
    assert "serving path" not in clean.reason and clean.candidate["n"] >= 10

    # A training-side decoder that forgets a step (here: inverts what it reads) is the
    # skew the check exists for; the job's decoder is untouched.
    original = datasets.decode_image_bytes

    def skewed(data, content_type, limits):
        decoded = original(data, content_type, limits)
        decoded.pixels = 1.0 - decoded.pixels
        return decoded

    monkeypatch.setattr(datasets, "decode_image_bytes", skewed)
    decision = judge(registry.root, MODEL_NAME, "1", str(data), SMALL)
    assert not decision.promoted and decision.reason.startswith("serving path")
    assert "skew" in decision.reason


def test_the_gate_judges_on_the_holdout_only(tmp_path, judged_npz):
    registry = ModelRegistry(str(tmp_path / "registry"))
    register(registry, tmp_path / "s1", build_small_model(seed=4), data_roles=ROLES)
    decision = judge(registry.root, MODEL_NAME, "1", str(judged_npz), SMALL)
    with np.load(judged_npz) as arrays:
        keys = [f"sha256:{datasets.array_sha256(row)}" for row in arrays["train_images"]]
    expected = int((DataRoles.from_dict(ROLES).assign(keys) == HOLDOUT).sum())
    assert decision.split == HOLDOUT and decision.candidate["n"] == expected
    assert 0 < expected < 120
    # A model trained before data roles cannot say what its holdout was.
    register(registry, tmp_path / "s2", build_small_model(seed=5))
    with pytest.raises(ValueError, match="split='test'"):
        judge(registry.root, MODEL_NAME, "2", str(judged_npz), SMALL)
    assert judge(registry.root, MODEL_NAME, "2", str(judged_npz), SMALL,
                 split="val").candidate["n"] == 20


def test_production_and_the_recorded_reference_are_both_compared(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    for seed in (1, 2, 3):
        register(registry, tmp_path / f"s{seed}", build_small_model(seed=seed))
    assert compared_versions(registry, MODEL_NAME, None) == []
    registry.promote(MODEL_NAME, "2", reason="test")
    registry.set_status(MODEL_NAME, "2", PROMOTED, "test", reference_version="1")
    assert compared_versions(registry, MODEL_NAME, "2") == ["2", "1"]
    assert next_reference("3", 0.90, [{"version": "2", "auc": 0.92},
                                      {"version": "1", "auc": 0.95}]) == "1"
    assert next_reference("3", 0.97, [{"version": "2", "auc": 0.92}]) == "3"


def test_recording_a_decision_twice_is_harmless(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    for seed in (1, 2, 3):
        register(registry, tmp_path / f"s{seed}", build_small_model(seed=seed))
    registry.promote(MODEL_NAME, "1", reason="first")
    promoted = GateDecision(MODEL_NAME, "2", True, "better", {"auc": 0.9}, "1",
                            reference_version="2")
    record_decision(registry.root, promoted)
    # An Airflow retry of the same task after the pointer moved: the work is done.
    record_decision(registry.root, GateDecision(**json.loads(json.dumps(promoted.to_dict()))))
    assert registry.production(MODEL_NAME) == "2"
    assert registry.pointer_document(MODEL_NAME)["history"] == ["1"]
    assert registry.status(MODEL_NAME, "2")["reference_version"] == "2"
    rejected = GateDecision(MODEL_NAME, "3", False, "worse", {"auc": 0.5}, "2")
    record_decision(registry.root, rejected)
    record_decision(registry.root, rejected)
    assert registry.status(MODEL_NAME, "3")["state"] == REJECTED
    # A decision judged against a production that has since moved is still refused.
    stale = GateDecision(MODEL_NAME, "3", True, "better", {"auc": 0.9}, "1")
    with pytest.raises(ValueError, match="run the gate again"):
        record_decision(registry.root, stale)


def test_data_a_rejected_candidate_was_trained_on_is_not_retrained(tmp_path, judged_npz):
    registry = ModelRegistry(str(tmp_path / "registry"))
    fingerprint = datasets.fingerprint_source(judged_npz)
    register(registry, tmp_path / "s1", build_small_model(seed=1),
             data_fingerprint=fingerprint)
    assert not check_data(str(judged_npz), registry.root, MODEL_NAME).unchanged
    record_decision(registry.root, GateDecision(MODEL_NAME, "1", False, "AUC too low", {}))
    check = check_data(str(judged_npz), registry.root, MODEL_NAME)
    assert check.unchanged and check.rejected_version == "1"
    assert "rejected" in check.explain() and "AUC too low" in check.explain()
    other = tmp_path / "other.npz"
    with np.load(judged_npz) as arrays:
        np.savez(other, **{k: arrays[k] for k in arrays.files}, extra=np.zeros(1))
    assert not check_data(str(other), registry.root, MODEL_NAME).unchanged


@pytest.mark.parametrize("overrides", [{"target_sensitivity": 0.0}, {"auc_tolerance": -0.1},
                                       {"min_per_class": 0}, {"bootstrap_resamples": 10}])
def test_gate_policy_refuses_settings_that_would_judge_nothing(overrides):
    with pytest.raises(ValueError):
        GatePolicy(**overrides)

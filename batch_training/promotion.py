"""The promotion gate: a candidate version becomes production only if it earns it.

The gate judges on the candidate's **holdout** (``batch_training.roles``): training
images that neither fitting, early stopping (the validation split) nor threshold
calibration saw. Every model is re-scored there now, each through its own
preprocessing, so the comparison is paired: the same images, scored by both.

1. **Enough to judge.** At least ``min_per_class`` positive and other holdout images
   (30), else the gate refuses to judge and the candidate is rejected.
2. **Serving path.** The candidate is loaded by the serving loader (which refuses a
   model at odds with its metadata or producing non-probabilities). The same image
   files (DICOM bytes; an npz's images are written as DICOM first) go through the
   training loader with the judged model and through the job's loader
   (``load_image``, access policy and all) with a freshly loaded model in the job's
   ``ModelServer``; scores must agree within ``skew_tolerance`` (1e-4).
3. **Sensitivity.** The one-sided 95% lower confidence bound (Clopper-Pearson) of the
   holdout sensitivity at the candidate's own threshold reaches ``target_sensitivity``.
4. **Specificity floor.** Holdout specificity at that threshold is at least
   ``min_specificity`` (0.5): a threshold bought with alarms on most normals is refused.
5. **First model:** holdout AUC >= ``first_model_auc_floor`` (0.80).
6. **Non-inferiority** to production and to the *reference* (the best model promoted
   so far, re-scored now): by a paired bootstrap, the lower 95% bound of the AUC
   difference is above ``-auc_tolerance`` (0.01) and that of the specificity
   difference (each model at its own threshold) above ``-specificity_tolerance``
   (0.05). The reference only changes to a model that beat it on the same images,
   so a chain of candidates each a little worse than the last cannot drift away.

Then the decision is recorded: promoted (pointer moved, old one kept for rollback),
or kept as ``rejected`` with the reason, in the version's status.json.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import tempfile
from pathlib import Path

import numpy as np

from batch_training import datasets
from batch_training.evaluation import (binary_labels, evaluate_scores, names_for_unnamed_npz,
                                       paired_auc_difference_bound,
                                       paired_specificity_difference_bound, positive_scores,
                                       sensitivity_lower_bound)
from batch_training.roles import HOLDOUT, DataRoles, too_few
from streaming.imaging.access import AccessPolicy
from streaming.imaging.decoding import load_image
from streaming.imaging.preprocessing import preprocess
from streaming.imaging.types import ImageLimits, ImageRejected
from streaming.modeling.loading import LoadedModel, ModelRefused, load_model
from streaming.modeling.metadata import ModelMetadata
from streaming.modeling.registry import PROMOTED, REJECTED, ModelRegistry
from streaming.modeling.scoring import ImageToScore, ModelServer, Scoring

LOG = logging.getLogger(__name__)
SKEW_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show on the holdout; see the module docstring."""
    auc_tolerance: float = 0.01
    specificity_tolerance: float = 0.05
    target_sensitivity: float = 0.95
    min_specificity: float = 0.50
    first_model_auc_floor: float = 0.80
    min_per_class: int = 30
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    serving_samples: int = 16
    skew_tolerance: float = SKEW_TOLERANCE

    def __post_init__(self):
        for name in ("target_sensitivity", "confidence"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("auc_tolerance", "specificity_tolerance"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {getattr(self, name)}")
        if not 0.0 <= self.min_specificity < 1.0 or not 0.5 <= self.first_model_auc_floor <= 1.0:
            raise ValueError("min_specificity must be in [0, 1) and first_model_auc_floor in "
                             "[0.5, 1]")
        if self.min_per_class < 1 or self.serving_samples < 1 or self.bootstrap_resamples < 100:
            raise ValueError("min_per_class and serving_samples must be at least 1, "
                             "bootstrap_resamples at least 100")


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The gate's verdict. ``candidate``: its metrics on ``split`` (with the sensitivity's
    lower bound); ``comparisons``: one entry per model it was compared with (production,
    reference); ``reference_version``: the best model so far, recorded with a promotion."""
    model_name: str
    version: str
    promoted: bool
    reason: str
    candidate: dict
    production_version: str | None = None
    production: dict | None = None
    split: str = HOLDOUT
    comparisons: list = dataclasses.field(default_factory=list)
    reference_version: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(eq=False)
class ScoredModel:
    """One model's positive scores on the judged images, and its own operating threshold."""
    version: str
    scores: np.ndarray
    threshold: float


# -- the decision, from scores ----------------------------------------------------------

def decide(labels: np.ndarray, candidate: ScoredModel, others: list[ScoredModel],
           policy: GatePolicy, split: str = HOLDOUT, positive_class: str = "positive",
           calibration_problem: str | None = None) -> tuple[bool, str, dict, list]:
    """(promote?, why, the candidate's metrics, comparisons) from scores on the same images.

    ``others``: production and the reference, if any, scored on the same images (an
    empty list for a first model). ``calibration_problem``: why the candidate's
    thresholds were set on too few images (training records it), if they were.
    """
    labels = np.asarray(labels)
    problem = too_few(labels, policy.min_per_class, split)
    if calibration_problem and not problem:
        problem = f"its thresholds mean little: {calibration_problem}"
    if problem:
        return False, f"refused to judge: {problem}", {"split": split, "n": len(labels)}, []
    result = evaluate_scores(labels, candidate.scores, candidate.threshold, positive_class)
    lower = sensitivity_lower_bound(result.tp, result.tp + result.fn, policy.confidence)
    metrics = {**result.to_dict(), "split": split, "sensitivity_lower_bound": lower}
    where = f"on the {split} split ({result.n} images)"
    if lower < policy.target_sensitivity:
        return False, (f"sensitivity {result.sensitivity:.3f} at threshold "
                       f"{result.threshold:.3f} {where}: its {policy.confidence:.0%} lower "
                       f"bound {lower:.3f} is below the target {policy.target_sensitivity:.2f}"
                       ), metrics, []
    if result.specificity < policy.min_specificity:
        return False, (f"specificity {result.specificity:.3f} at threshold "
                       f"{result.threshold:.3f} {where} is below the floor "
                       f"{policy.min_specificity:.2f}"), metrics, []
    if not others:
        if result.auc < policy.first_model_auc_floor:
            return False, (f"first model: AUC {result.auc:.3f} {where} is below the floor "
                           f"{policy.first_model_auc_floor:.2f}"), metrics, []
        return True, (f"first model: AUC {result.auc:.3f} {where} >= floor "
                      f"{policy.first_model_auc_floor:.2f}; sensitivity lower bound "
                      f"{lower:.3f} >= {policy.target_sensitivity:.2f}"), metrics, []
    comparisons = [compare(labels, candidate, other, policy) for other in others]
    for comparison in comparisons:
        if comparison["auc_difference_lower_bound"] < -policy.auc_tolerance:
            return False, (f"AUC {result.auc:.4f} vs version {comparison['version']}'s "
                           f"{comparison['auc']:.4f} {where}: the {policy.confidence:.0%} lower "
                           f"bound of the difference, "
                           f"{comparison['auc_difference_lower_bound']:.4f}, is below "
                           f"-{policy.auc_tolerance}"), metrics, comparisons
        if comparison["specificity_difference_lower_bound"] < -policy.specificity_tolerance:
            return False, (f"specificity {result.specificity:.3f} vs version "
                           f"{comparison['version']}'s {comparison['specificity']:.3f} (each at "
                           f"its own threshold) {where}: the {policy.confidence:.0%} lower bound "
                           f"of the difference, "
                           f"{comparison['specificity_difference_lower_bound']:.3f}, is below "
                           f"-{policy.specificity_tolerance}"), metrics, comparisons
    against = ", ".join(f"version {c['version']} (AUC {c['auc']:.4f})" for c in comparisons)
    return True, (f"AUC {result.auc:.4f} {where}, non-inferior to {against} within "
                  f"{policy.auc_tolerance}; sensitivity lower bound {lower:.3f} >= "
                  f"{policy.target_sensitivity:.2f}"), metrics, comparisons


def compare(labels: np.ndarray, candidate: ScoredModel, other: ScoredModel,
            policy: GatePolicy) -> dict:
    """Paired differences candidate - other on the same images, with lower bounds."""
    auc_difference, auc_lower = paired_auc_difference_bound(
        labels, candidate.scores, other.scores, confidence=policy.confidence,
        resamples=policy.bootstrap_resamples)
    specificity_difference, specificity_lower = paired_specificity_difference_bound(
        labels, candidate.scores, candidate.threshold, other.scores, other.threshold,
        confidence=policy.confidence, resamples=policy.bootstrap_resamples)
    other_result = evaluate_scores(labels, other.scores, other.threshold, "positive")
    return {"version": other.version, "auc": other_result.auc,
            "threshold": other.threshold, "specificity": other_result.specificity,
            "sensitivity": other_result.sensitivity,
            "auc_difference": auc_difference, "auc_difference_lower_bound": auc_lower,
            "specificity_difference": specificity_difference,
            "specificity_difference_lower_bound": specificity_lower}


def next_reference(candidate_version: str, candidate_auc: float, comparisons: list) -> str:
    """The best of the candidate and the models it was compared with, on these images."""
    best_version, best_auc = candidate_version, candidate_auc
    for comparison in comparisons:
        if comparison["auc"] > best_auc:
            best_version, best_auc = comparison["version"], comparison["auc"]
    return best_version


# -- the serving path ------------------------------------------------------------------

def check_serving_path(registry: ModelRegistry, name: str, version: str, loaded: LoadedModel,
                       files: list[str], tolerance: float = SKEW_TOLERANCE) -> None:
    """The same image files through training's loader and through the job's.

    Training side: ``datasets.read_input_bytes`` + ``decode_input`` + ``preprocess``,
    scored by ``loaded`` (the model the gate judged). Job side: ``load_image`` under an
    access policy, routed, preprocessed and scored by the job's ``ModelServer`` with
    the version loaded afresh from the registry. Raises ModelRefused on any difference
    above ``tolerance``, or an image the job would not score.
    """
    metadata = loaded.metadata
    spec = metadata.preprocessing
    limits = ImageLimits()
    training_inputs = [preprocess(datasets.decode_input(
        datasets.read_input_bytes(path, limits.max_file_bytes), path, limits).pixels, spec)
        for path in files]
    column = metadata.classes.index(metadata.positive_class)
    trained = loaded.predict(np.stack(training_inputs))[:, column]
    served_model = load_model(registry, name, version)  # fresh, as a job would load it
    policy = AccessPolicy(allowed_roots=tuple(sorted({_folder(path) for path in files})))
    modality = (metadata.applicability.modalities or ("OT",))[0]
    body_part = (metadata.applicability.body_parts or (None,))[0]
    batch = []
    for index, path in enumerate(files):
        try:
            image = load_image(path, datasets.content_type(path), policy=policy, limits=limits)
        except ImageRejected as rejected:
            raise ModelRefused(f"{metadata.model_id}: the job's loader refuses a judged image "
                               f"({rejected.reason.value})") from None
        batch.append(ImageToScore(index, image, image.modality or modality,
                                  image.body_part_examined or body_part))
    for scoring, expected in zip(ModelServer(served_model).score(batch), trained):
        if scoring.status != Scoring.SCORED:
            raise ModelRefused(f"{metadata.model_id}: a judged image came out "
                               f"{scoring.status} on the serving path "
                               f"({scoring.failure or scoring.not_applicable_reason})")
        served = scoring.decision.positive_score
        if abs(served - float(expected)) > tolerance:
            raise ModelRefused(f"{metadata.model_id}: the job scored {served:.6f} where the "
                               f"training loader scored {float(expected):.6f} for the same file "
                               f"(tolerance {tolerance}): training/serving skew")


def _folder(location: str) -> str:
    """The folder (local, symlinks resolved) or prefix (gs://.../) holding a file."""
    if datasets.is_uri(location):
        return posixpath.dirname(location) + "/"
    return os.path.dirname(os.path.realpath(location))


def serving_sample_files(judged: datasets.LabeledSplit, spec, count: int,
                         folder: Path) -> list[str]:
    """Up to ``count`` judged images as files: their own files where the source has them,
    else (array sources) written as 8-bit DICOM, the format modalities send."""
    if judged.locations is not None:
        return list(judged.locations[:count])
    from streaming.local.phantoms import write_dicom  # noqa: PLC0415 - pydicom writer

    display = judged.images[:count] * np.asarray(spec.std, np.float32) + np.asarray(
        spec.mean, np.float32)
    files = []
    for index, pixels in enumerate(display):
        path = folder / f"judged-{index}.dcm"
        gray = pixels[..., 0] if pixels.shape[-1] == 1 else pixels.mean(axis=-1)
        write_dicom(path, np.clip(gray, 0.0, 1.0), modality="CR", study_uid=f"2.25.{index + 1}",
                    series_uid="2.25.1", sop_uid=f"2.25.{index + 1}.1",
                    transfer_syntax="explicit_le", photometric="MONOCHROME2")
        files.append(str(path))
    return files


# -- judging a registered candidate ----------------------------------------------------

def judged_images(metadata: ModelMetadata, roles: DataRoles | None, data: str, split: str,
                  class_names=None, labels_csv: str | None = None) -> datasets.LabeledSplit:
    """The images the gate judges on, preprocessed for ``metadata``'s model: the
    ``roles``' holdout of the training split, or the whole of another named split."""
    if class_names is None and labels_csv is None:
        class_names = names_for_unnamed_npz(data, metadata.classes)
    if split != HOLDOUT:
        return datasets.load_split(data, metadata.preprocessing, split, class_names,
                                   labels_csv=labels_csv)
    if roles is None:
        raise ValueError(f"{metadata.model_id} was trained before data roles, so its holdout "
                         "is unknown; gate it on a split it never saw (split='test')")
    train = datasets.load_split(data, metadata.preprocessing, "train", class_names,
                                labels_csv=labels_csv)
    return train.subset(roles.assign(train.keys) == HOLDOUT)


def judge(model_registry: str, name: str, version: str, validation_data: str,
          policy: GatePolicy = GatePolicy(), split: str = HOLDOUT,
          class_names=None, labels_csv: str | None = None) -> GateDecision:
    """Evaluate a registered candidate against the policy; records nothing.

    ``validation_data`` (with ``labels_csv`` for a DICOM folder) is the raw labeled
    data: the gate finds the candidate's holdout in its training split (or judges on
    ``split`` when another is named) and re-scores every model there.
    """
    registry = ModelRegistry(model_registry)
    production_version = registry.production(name)
    if production_version == version:
        raise ValueError(f"{name} version {version} is already production")
    try:
        loaded = load_model(registry, name, version)   # the serving path's loader and checks
    except ModelRefused as refused:
        return GateDecision(name, version, False, f"serving path: {refused}", {},
                            production_version, split=split)
    metadata = loaded.metadata
    roles = DataRoles.from_dict(metadata.extra.get("data_roles"))
    judged = judged_images(metadata, roles, validation_data, split, class_names, labels_csv)
    labels = binary_labels(judged, metadata.classes, metadata.positive_class)
    candidate = ScoredModel(version, positive_scores(loaded, judged.images), metadata.threshold)
    if not too_few(labels, policy.min_per_class, split):
        try:
            with tempfile.TemporaryDirectory(prefix="medimg-gate-") as folder:
                files = serving_sample_files(judged, metadata.preprocessing,
                                             policy.serving_samples, Path(folder))
                check_serving_path(registry, name, version, loaded, files,
                                   policy.skew_tolerance)
        except ModelRefused as refused:
            return GateDecision(name, version, False, f"serving path: {refused}",
                                {"split": split}, production_version, split=split)
    others = [rescore(registry, name, other, judged.keys, roles, validation_data, split,
                      class_names, labels_csv)
              for other in compared_versions(registry, name, production_version)]
    calibration = (metadata.extra.get("metrics") or {}).get("calibration") or {}
    promoted, reason, metrics, comparisons = decide(labels, candidate, others, policy, split,
                                                    metadata.positive_class,
                                                    calibration.get("too_few"))
    production = next((c for c in comparisons if c["version"] == production_version), None)
    reference = (next_reference(version, metrics["auc"], comparisons) if promoted else None)
    return GateDecision(name, version, promoted, reason, metrics, production_version,
                        production, split, comparisons, reference)


def compared_versions(registry: ModelRegistry, name: str,
                      production_version: str | None) -> list[str]:
    """Production and the reference its promotion recorded (the best so far), if other."""
    if production_version is None:
        return []
    versions = [production_version]
    reference = registry.status(name, production_version).get("reference_version")
    if reference and reference != production_version and reference in registry.versions(name):
        versions.append(str(reference))
    return versions


def rescore(registry: ModelRegistry, name: str, version: str, keys: tuple[str, ...],
            roles: DataRoles | None, data: str, split: str, class_names,
            labels_csv: str | None) -> ScoredModel:
    """Another version's scores on the judged images, through its own preprocessing."""
    loaded = load_model(registry, name, version)
    images = judged_images(loaded.metadata, roles, data, split, class_names, labels_csv)
    if images.keys != keys:
        raise ValueError(f"{name} version {version} read other images than the candidate "
                         "from the same data; the gate cannot pair them")
    return ScoredModel(version, positive_scores(loaded, images.images), loaded.metadata.threshold)


def gate(model_registry: str, name: str, version: str, validation_data: str,
         policy: GatePolicy = GatePolicy(), split: str = HOLDOUT,
         class_names=None, labels_csv: str | None = None) -> GateDecision:
    """Run the gate on a registered candidate and record the decision in the registry."""
    return record_decision(model_registry, judge(
        model_registry, name, version, validation_data, policy, split, class_names, labels_csv))


# -- recording -------------------------------------------------------------------------

def record_decision(model_registry: str, decision: GateDecision) -> GateDecision:
    """Promote the version, or keep it as rejected with the reason, as ``judge`` decided.

    Idempotent: recording a decision again (an Airflow retry after the pointer moved,
    or after the status was written) finds the work done and changes nothing else.
    """
    registry = ModelRegistry(model_registry)
    name, version = decision.model_name, decision.version
    current = registry.production(name)
    state = registry.status(name, version).get("state")
    details = {"candidate": decision.candidate, "production_version": decision.production_version,
               "production": decision.production, "split": decision.split,
               "comparisons": decision.comparisons,
               "reference_version": decision.reference_version}
    if decision.promoted:
        if current == version:
            LOG.info("already promoted", extra={"model": f"{name}/{version}"})
        elif current != decision.production_version:
            raise ValueError(f"{name} production moved from {decision.production_version} to "
                             f"{current} after version {version} was judged; run the gate again")
        else:
            registry.promote(name, version, reason=decision.reason)
        registry.set_status(name, version, PROMOTED, decision.reason, **details)
        LOG.info("promoted", extra={"model": f"{name}/{version}", "reason": decision.reason})
    elif state == REJECTED:
        LOG.info("already rejected", extra={"model": f"{name}/{version}"})
    else:
        registry.set_status(name, version, REJECTED, decision.reason, **details)
        LOG.warning("rejected", extra={"model": f"{name}/{version}", "reason": decision.reason})
    return decision

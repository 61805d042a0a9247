"""The promotion gate: a candidate version becomes production only if it earns it.

1. **Serving path.** The candidate is loaded by the serving loader (which refuses a
   model at odds with its metadata or producing non-probabilities) and scores sample
   validation images through the streaming job's ``ModelServer`` (routing,
   preprocessing, prediction). Those scores must match the offline evaluation's for
   the same images: a gap means training/serving skew.
2. **Metrics.** On the same validation data, every model preprocessed its own way:
   - first model: validation AUC >= ``first_model_auc_floor`` (0.80);
   - later: AUC >= production's AUC, re-scored now on the same data, minus
     ``auc_tolerance`` (0.01);
   - always: sensitivity at the candidate's own threshold >= ``target_sensitivity``
     (0.95): a triage tool must not miss disease.
3. **Decision.** Promoted (production pointer moved, old one kept for rollback) or
   kept as ``rejected`` with the reason, in the version's status.json.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from batch_training.evaluation import evaluate_loaded, evaluate_version
from streaming.imaging.types import DecodedImage
from streaming.modeling.loading import LoadedModel, ModelRefused, load_model
from streaming.modeling.registry import PROMOTED, REJECTED, ModelRegistry
from streaming.modeling.scoring import ImageToScore, ModelServer, Scoring

LOG = logging.getLogger(__name__)
SKEW_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class GatePolicy:
    auc_tolerance: float = 0.01
    target_sensitivity: float = 0.95
    first_model_auc_floor: float = 0.80
    serving_samples: int = 16


@dataclasses.dataclass(frozen=True)
class GateDecision:
    model_name: str
    version: str
    promoted: bool
    reason: str
    candidate: dict
    production_version: str | None = None
    production: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_serving_path(loaded: LoadedModel, images: np.ndarray,
                       offline_scores: np.ndarray) -> None:
    """Score ``images`` (the model's own preprocessed input) as the streaming job would.

    The images are handed over as display pixels (normalization undone), so the job's
    preprocessing runs for real and must give back exactly what evaluation fed.
    Raises ModelRefused when anything differs.
    """
    metadata = loaded.metadata
    spec = metadata.preprocessing
    modality = metadata.applicability.modalities[0] if metadata.applicability.modalities else "OT"
    body_part = (metadata.applicability.body_parts or (None,))[0]
    photometric = "RGB" if spec.channels == 3 else "MONOCHROME2"
    if metadata.applicability.photometric_interpretations:
        photometric = metadata.applicability.photometric_interpretations[0]
    display = images * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)
    batch = [ImageToScore(i, DecodedImage(pixels if spec.channels == 3 else pixels[..., 0],
                                          photometric, modality, body_part),
                          modality, body_part)
             for i, pixels in enumerate(display)]
    scorings = ModelServer(loaded).score(batch)
    for scoring, expected in zip(scorings, offline_scores):
        if scoring.status != Scoring.SCORED:
            raise ModelRefused(f"{metadata.model_id}: a validation image came out "
                               f"{scoring.status} on the serving path "
                               f"({scoring.failure or scoring.not_applicable_reason})")
        served = scoring.decision.positive_score
        if abs(served - float(expected)) > SKEW_TOLERANCE:
            raise ModelRefused(f"{metadata.model_id}: serving scored {served:.6f} where "
                               f"offline evaluation scored {float(expected):.6f}: "
                               "training/serving skew")


def decide(candidate: dict, production: dict | None, policy: GatePolicy) -> tuple[bool, str]:
    """(promote?, why) from validation metrics (dicts with auc and sensitivity)."""
    if candidate["sensitivity"] < policy.target_sensitivity:
        return False, (f"sensitivity {candidate['sensitivity']:.3f} at threshold "
                       f"{candidate['threshold']:.3f} is below the target "
                       f"{policy.target_sensitivity:.2f}")
    if production is None:
        if candidate["auc"] < policy.first_model_auc_floor:
            return False, (f"first model: validation AUC {candidate['auc']:.3f} is below the "
                           f"floor {policy.first_model_auc_floor:.2f}")
        return True, (f"first model: validation AUC {candidate['auc']:.3f} >= floor "
                      f"{policy.first_model_auc_floor:.2f}, sensitivity "
                      f"{candidate['sensitivity']:.3f}")
    floor = production["auc"] - policy.auc_tolerance
    if candidate["auc"] < floor:
        return False, (f"validation AUC {candidate['auc']:.4f} is below production's "
                       f"{production['auc']:.4f} minus tolerance {policy.auc_tolerance}")
    return True, (f"validation AUC {candidate['auc']:.4f} vs production "
                  f"{production['auc']:.4f} (tolerance {policy.auc_tolerance}), sensitivity "
                  f"{candidate['sensitivity']:.3f}")


def gate(model_registry: str, name: str, version: str, validation_data: str,
         policy: GatePolicy = GatePolicy(), split: str = "val",
         class_names=None, labels_csv: str | None = None) -> GateDecision:
    """Run the gate on a registered candidate and record the decision in the registry."""
    return record_decision(model_registry, judge(
        model_registry, name, version, validation_data, policy, split, class_names, labels_csv))


def judge(model_registry: str, name: str, version: str, validation_data: str,
          policy: GatePolicy = GatePolicy(), split: str = "val",
          class_names=None, labels_csv: str | None = None) -> GateDecision:
    """Evaluate a registered candidate against the policy; records nothing.

    ``validation_data`` (with ``labels_csv`` for a DICOM folder) is raw data: each
    model preprocesses it its own way, so production is re-scored fairly.
    """
    registry = ModelRegistry(model_registry)
    production_version = registry.production(name)
    if production_version == version:
        raise ValueError(f"{name} version {version} is already production")
    loaded = load_model(registry, name, version)   # the serving path's loader and checks
    result, _labels, scores, images = evaluate_loaded(
        loaded, validation_data, split, class_names=class_names, labels_csv=labels_csv,
        with_images=True)
    candidate = result.to_dict()
    try:
        count = min(policy.serving_samples, len(images))
        check_serving_path(loaded, images[:count], scores[:count])
    except ModelRefused as refused:
        return GateDecision(name, version, False, f"serving path: {refused}", candidate)
    production = None
    if production_version is not None:
        production = evaluate_version(model_registry, name, production_version,
                                      validation_data, split, class_names=class_names,
                                      labels_csv=labels_csv)[0].to_dict()
    promoted, reason = decide(candidate, production, policy)
    return GateDecision(name, version, promoted, reason, candidate, production_version,
                        production)


def record_decision(model_registry: str, decision: GateDecision) -> GateDecision:
    """Promote the version, or keep it as rejected with the reason, as ``judge`` decided."""
    registry = ModelRegistry(model_registry)
    current = registry.production(decision.model_name)
    if decision.promoted and current != decision.production_version:
        raise ValueError(f"{decision.model_name} production moved from "
                         f"{decision.production_version} to {current} after version "
                         f"{decision.version} was judged; run the gate again")
    details = {"candidate": decision.candidate, "production_version": decision.production_version,
               "production": decision.production}
    if decision.promoted:
        registry.promote(decision.model_name, decision.version, reason=decision.reason)
        registry.set_status(decision.model_name, decision.version, PROMOTED, decision.reason,
                            **details)
        LOG.info("promoted", extra={"model": f"{decision.model_name}/{decision.version}",
                                    "reason": decision.reason})
    else:
        registry.set_status(decision.model_name, decision.version, REJECTED, decision.reason,
                            **details)
        LOG.warning("rejected", extra={"model": f"{decision.model_name}/{decision.version}",
                                       "reason": decision.reason})
    return decision

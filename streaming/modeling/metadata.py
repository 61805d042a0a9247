"""What travels with a model: classes, thresholds, preprocessing and where it applies.

The contract is schemas/model_metadata.v1.json; ``ModelMetadata`` is its typed view.
Routing rules are data in the metadata (``Applicability``), not code: a chest X-ray
model says it covers CR/DX chest images, and anything else gets ``not_applicable``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Sequence

import numpy as np

from streaming.contracts import validation
from streaming.imaging.preprocessing import PreprocessingSpec
from streaming.contracts.records import utc_iso


class InvalidModelMetadata(ValueError):
    """metadata.json breaks the contract or contradicts itself."""


def _upper_tuple(values: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(v.strip().upper() for v in values or ())


@dataclasses.dataclass(frozen=True)
class Applicability:
    """Which images a model may score. An empty tuple means "any"."""
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...] = ()
    photometric_interpretations: tuple[str, ...] = ()
    require_body_part: bool = False

    def not_applicable_reason(self, modality: str | None, body_part: str | None,
                              photometric_interpretation: str | None) -> str | None:
        """None when the model covers the image, else which rule excludes it."""
        modality = (modality or "").strip().upper()
        if self.modalities and modality not in self.modalities:
            return f"modality {modality or '(none)'} is not one of {', '.join(self.modalities)}"
        body_part = (body_part or "").strip().upper()
        if self.body_parts:
            if body_part and body_part not in self.body_parts:
                return f"body part {body_part} is not one of {', '.join(self.body_parts)}"
            if not body_part and self.require_body_part:
                return "the image names no body part and the model requires one"
        photometric = (photometric_interpretation or "").strip().upper()
        if self.photometric_interpretations and photometric not in self.photometric_interpretations:
            return (f"photometric interpretation {photometric or '(none)'} is not one of "
                    f"{', '.join(self.photometric_interpretations)}")
        return None

    def to_dict(self) -> dict:
        return {"modalities": list(self.modalities), "body_parts": list(self.body_parts),
                "photometric_interpretations": list(self.photometric_interpretations),
                "require_body_part": self.require_body_part}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Applicability":
        return cls(modalities=_upper_tuple(data.get("modalities")),
                   body_parts=_upper_tuple(data.get("body_parts")),
                   photometric_interpretations=_upper_tuple(data.get("photometric_interpretations")),
                   require_body_part=bool(data.get("require_body_part", False)))


@dataclasses.dataclass(frozen=True)
class Decision:
    """A model's reading of one image: scores by class and what they mean."""
    scores: dict[str, float]
    label: str
    positive: bool
    positive_score: float


@dataclasses.dataclass(frozen=True)
class ClassCode:
    """A class as a coded concept (code value, coding scheme, meaning), as DICOM reports need it."""
    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


# Codes for class names older metadata already uses, so their reports are coded too.
DEFAULT_CLASS_CODES = {
    "pneumonia": ClassCode("233604007", "SCT", "Pneumonia"),
    "normal": ClassCode("17621005", "SCT", "Normal"),
    "lesion": ClassCode("52988006", "SCT", "Lesion"),
}
LOCAL_CODING_SCHEME = "99MEDIMG"


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    classes: tuple[str, ...]
    positive_class: str
    threshold: float
    urgent_threshold: float
    preprocessing: PreprocessingSpec
    applicability: Applicability
    created_at: str
    # Everything else in metadata.json (metrics, data fingerprint, training
    # configuration, code version): kept so that a round trip loses nothing.
    extra: Mapping = dataclasses.field(default_factory=dict)

    def class_code(self, class_name: str) -> ClassCode:
        """The coded concept of a class: from ``class_codes``, a built-in default, or a
        local code carrying the class name (never an invented SNOMED CT code)."""
        given = (self.extra.get("class_codes") or {}).get(class_name)
        if given:
            return ClassCode(given["value"], given["scheme"], given["meaning"])
        return DEFAULT_CLASS_CODES.get(class_name.lower(),
                                       ClassCode(class_name[:16], LOCAL_CODING_SCHEME, class_name))

    @property
    def explained_layer(self) -> str | None:
        """The layer Grad-CAM explains; None: the model's last 2-D convolution."""
        return self.extra.get("explained_layer")

    @property
    def model_id(self) -> str:
        """How findings and logs name the serving model: ``name/version``."""
        return f"{self.name}/{self.version}"

    def decide(self, probabilities: np.ndarray) -> Decision:
        """Turn one output vector into a label: positive when its score reaches the threshold."""
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        scores = {name: float(p) for name, p in zip(self.classes, probabilities)}
        positive_score = scores[self.positive_class]
        positive = positive_score >= self.threshold
        if positive:
            label = self.positive_class
        else:
            others = {c: s for c, s in scores.items() if c != self.positive_class}
            label = max(others, key=others.get)
        return Decision(scores=scores, label=label, positive=positive,
                        positive_score=positive_score)

    def to_dict(self) -> dict:
        document = dict(self.extra)
        document.update({
            "schema_version": 1, "name": self.name, "version": self.version,
            "classes": list(self.classes), "positive_class": self.positive_class,
            "threshold": self.threshold, "urgent_threshold": self.urgent_threshold,
            "preprocessing": self.preprocessing.to_dict(),
            "applicability": self.applicability.to_dict(), "created_at": self.created_at,
        })
        return document

    @classmethod
    def from_dict(cls, document: Mapping) -> "ModelMetadata":
        problems = validation.errors(validation.MODEL_METADATA, dict(document))
        if problems:
            raise InvalidModelMetadata("model metadata breaks schemas/model_metadata.v1.json: "
                                       + "; ".join(problems))
        if document["positive_class"] not in document["classes"]:
            raise InvalidModelMetadata(
                f"positive_class {document['positive_class']!r} is not one of the classes")
        known = {"schema_version", "name", "version", "classes", "positive_class", "threshold",
                 "urgent_threshold", "preprocessing", "applicability", "created_at"}
        try:
            preprocessing = PreprocessingSpec.from_dict(document["preprocessing"])
        except ValueError as error:
            raise InvalidModelMetadata(f"preprocessing: {error}") from error
        return cls(
            name=document["name"], version=document["version"],
            classes=tuple(document["classes"]), positive_class=document["positive_class"],
            threshold=float(document["threshold"]),
            urgent_threshold=float(document["urgent_threshold"]),
            preprocessing=preprocessing,
            applicability=Applicability.from_dict(document["applicability"]),
            created_at=document["created_at"],
            extra={k: v for k, v in document.items() if k not in known})


def utc_now() -> str:
    return utc_iso(time.time())

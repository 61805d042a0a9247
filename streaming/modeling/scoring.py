"""Scoring a batch of decoded images with one model version: route, preprocess, predict.

Routing, preprocessing and prediction happen together, under the same model
version, so a finding is never the product of one model's preprocessing and
another model's weights.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Sequence

import numpy as np

from streaming.imaging.preprocessing import preprocess
from streaming.imaging.types import DecodedImage
from streaming.modeling.loading import LoadedModel
from streaming.modeling.metadata import Decision

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class ImageToScore:
    """One decoded image and what routing needs; ``context`` rides along untouched."""
    context: Any
    image: DecodedImage
    modality: str | None
    body_part_examined: str | None


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What one model version made of one image."""
    status: str
    model_name: str
    model_version: str
    decision: Decision | None = None
    threshold: float | None = None
    urgent_threshold: float | None = None
    not_applicable_reason: str | None = None
    failure: str | None = None
    modality: str | None = None
    frame_index: int = 0
    frame_count: int = 1

    SCORED = "scored"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"

    @property
    def model_id(self) -> str:
        return f"{self.model_name}/{self.model_version}"


class ModelServer:
    """Scores batches with one loaded model version at a time.

    A ``ProductionWatcher`` may ``offer`` a newly promoted version, loaded and checked
    in its own thread; the swap happens under the lock, between two batches, so a
    batch is never scored half by one version and half by another.
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self._lock = threading.Lock()
        self._offered: LoadedModel | None = None
        self.swaps = 0
        self.refused: dict[str, str] = {}  # version -> why it may not serve
        self.watcher = None  # the ProductionWatcher feeding offers, if any

    @property
    def model_id(self) -> str:
        return self.loaded.metadata.model_id

    @property
    def version(self) -> str:
        return self.loaded.metadata.version

    def offer(self, loaded: LoadedModel | None) -> None:
        """Serve ``loaded`` from the next batch on (None withdraws an earlier offer)."""
        self._offered = loaded

    def counts(self) -> tuple[int, int]:
        """(swaps so far, versions refused so far): for the job's counters."""
        return self.swaps, len(self.refused)

    def offered_version(self) -> str | None:
        offered = self._offered
        return offered.metadata.version if offered else None

    def _swap_if_offered(self) -> None:
        offered, self._offered = self._offered, None
        if offered is None or offered.metadata.version == self.version:
            return
        LOG.info("serving a new model version", extra={"from": self.model_id,
                                                      "to": offered.metadata.model_id})
        self.loaded = offered
        self.swaps += 1

    def score(self, batch: Sequence[ImageToScore]) -> list[Scoring]:
        with self._lock:
            self._swap_if_offered()
            return self._score(batch)

    def _score(self, batch: Sequence[ImageToScore]) -> list[Scoring]:
        metadata = self.loaded.metadata
        common = {"model_name": metadata.name, "model_version": metadata.version}
        results: list[Scoring | None] = [None] * len(batch)
        inputs, rows = [], []
        for i, item in enumerate(batch):
            frame = _frame_fields(item)
            reason = metadata.applicability.not_applicable_reason(
                item.modality, item.body_part_examined, item.image.photometric_interpretation)
            if reason:
                results[i] = Scoring(Scoring.NOT_APPLICABLE, **common, **frame,
                                     not_applicable_reason=reason)
                continue
            try:
                inputs.append(preprocess(item.image.pixels, metadata.preprocessing))
                rows.append((i, frame))
            except ValueError as error:
                results[i] = Scoring(Scoring.FAILED, **common, **frame,
                                     failure=f"image cannot be preprocessed: {error}")
        if inputs:
            probabilities = self.loaded.predict(np.stack(inputs))
            for (i, frame), row in zip(rows, probabilities):
                results[i] = self._read(row, common, frame)
        return results

    def _read(self, probabilities: np.ndarray, common: dict, frame: dict) -> Scoring:
        metadata = self.loaded.metadata
        if not np.all(np.isfinite(probabilities)):
            return Scoring(Scoring.FAILED, **common, **frame,
                           failure="the model produced a non-finite score (NaN or infinity)")
        if np.any(probabilities < 0) or np.any(probabilities > 1):
            return Scoring(Scoring.FAILED, **common, **frame,
                           failure="the model produced a score outside [0, 1]; "
                                   "its output layer must be a softmax or sigmoid")
        return Scoring(Scoring.SCORED, **common, **frame, decision=metadata.decide(probabilities),
                       threshold=metadata.threshold, urgent_threshold=metadata.urgent_threshold)


def _frame_fields(item: ImageToScore) -> dict:
    """What every scoring says about the image it is about."""
    return {"modality": item.modality, "frame_index": item.image.frame_index,
            "frame_count": item.image.frame_count}

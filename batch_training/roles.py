"""Which job each training image does: fitting, threshold calibration, or the gate's holdout.

One split cannot both tune a model and judge it. The labeled data's ``train`` split
is divided three ways; its ``validation`` split does early stopping (model
selection) and nothing else:

- ``fit``: what the model learns from;
- ``calibration``: sets the operating and urgent thresholds (never fitted on);
- ``holdout``: the promotion gate's judgement; neither fitting, early stopping nor
  calibration ever sees it.

An image's role is drawn from a hash of its *role key*: its group (a patient or
study named by the labels CSV's ``group`` column) when there is one, else the
sha256 of its bytes. So every image of a group lands on the same side, duplicates
travel together, and the draw is the same in every run, on every machine and in
every step (training reads shards, the gate reads the raw source). The salt is
fixed, not the training seed: an image in the holdout stays there night after
night, so a production model never fitted on the images its successor is judged
on (as long as the fractions do not grow past each other; see ``DataRoles``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

FIT, CALIBRATION, HOLDOUT = "fit", "calibration", "holdout"
ROLES_SALT = "medimg-data-roles-v1"


def role_key(sha256: str, group: str | None = None) -> str:
    """An image's role key: ``group:<name>`` when it belongs to a group, else its bytes' sha256.

    The group name never leaves this process: only its hash decides anything.
    """
    return f"group:{group}" if group else f"sha256:{sha256}"


def array_sha256(row: np.ndarray) -> str:
    """The sha256 of one stored array row (an npz image), as preprocessing records it."""
    return hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class DataRoles:
    """How the training split is divided: ``holdout_fraction`` of the role keys go to the
    gate's holdout, the next ``calibration_fraction`` to calibration, the rest to fitting.

    The draw is a hash in [0, 1): holdout below ``holdout_fraction``, calibration up to
    ``holdout_fraction + calibration_fraction``. Fitting only ever takes the top of the
    range, so a later model with other fractions is never judged on images an earlier
    one fitted on unless its holdout reaches into that model's fitting range.
    """
    calibration_fraction: float = 0.15
    holdout_fraction: float = 0.15
    salt: str = ROLES_SALT

    def __post_init__(self):
        if not (0.0 <= self.calibration_fraction < 1.0 and 0.0 <= self.holdout_fraction < 1.0
                and self.calibration_fraction + self.holdout_fraction < 0.9):
            raise ValueError("calibration_fraction and holdout_fraction must each be in [0, 1) "
                             "and leave at least 10% of the training images for fitting, got "
                             f"{self.calibration_fraction} and {self.holdout_fraction}")

    def assign(self, keys: Sequence[str]) -> np.ndarray:
        """The role (``FIT``, ``CALIBRATION`` or ``HOLDOUT``) of each role key, as an array."""
        draws = np.array([self._draw(key) for key in keys], dtype=np.float64)
        roles = np.full(len(draws), FIT, dtype=object)
        roles[draws < self.holdout_fraction + self.calibration_fraction] = CALIBRATION
        roles[draws < self.holdout_fraction] = HOLDOUT
        return roles

    def _draw(self, key: str) -> float:
        digest = hashlib.sha256(f"{self.salt}\0{key}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, document: dict | None) -> "DataRoles | None":
        """The roles a model's metadata records, or None for a model trained before them."""
        if not document:
            return None
        return cls(float(document["calibration_fraction"]), float(document["holdout_fraction"]),
                   str(document.get("salt", ROLES_SALT)))


def too_few(labels: np.ndarray, minimum: int, what: str) -> str | None:
    """Why ``labels`` (1 positive, 0 other) are too few to judge on, or None when enough.

    A share measured on a handful of images is mostly noise; below ``minimum`` of
    either class the step refuses rather than reports a number.
    """
    labels = np.asarray(labels)
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    if min(positives, negatives) < minimum:
        return (f"the {what} split holds {positives} positive and {negatives} other images; "
                f"at least {minimum} of each are needed")
    return None

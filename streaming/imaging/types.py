"""The values that pass between image loading, preprocessing and inference."""

from __future__ import annotations

import dataclasses

import numpy as np

from streaming.contracts.reasons import Reason

# Content types of the images the product reads (image_event.v1.json's content_type).
DICOM = "application/dicom"


PNG = "image/png"


JPEG = "image/jpeg"



@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """Bounds checked before and while reading, so a hostile file cannot exhaust memory.

    The defaults admit every real scanner file we know of (a 43x43 cm detector at
    0.1 mm is about 4300x4300) with a wide margin.
    """
    max_file_bytes: int = 256 * 1024 * 1024
    max_frame_pixels: int = 8192 * 8192
    max_frames: int = 4096
    # Rows x Columns x Frames x SamplesPerPixel, before decoding anything.
    max_total_samples: int = 1024 * 1024 * 1024


@dataclasses.dataclass(eq=False)
class DecodedImage:
    """Display-ready pixels of one frame and the few header facts routing needs.

    ``pixels`` is float32 in [0, 1]: grayscale (H, W) with larger meaning brighter
    (MONOCHROME1 already inverted, modality LUT and VOI/window already applied), or
    RGB (H, W, 3). No patient identity travels with it: the DICOM dataset is
    dropped as soon as the pixels are out.
    """
    pixels: np.ndarray
    photometric_interpretation: str
    modality: str | None = None
    body_part_examined: str | None = None
    frame_index: int = 0
    frame_count: int = 1


class ImageRejected(Exception):
    """An image that cannot be scored, with a dead-letter reason and a safe message.

    The message must never include values read from the file (they may be patient
    identity); it names the rule that failed and what to do.
    """

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

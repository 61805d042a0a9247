"""From display-ready pixels to a model's input: the one preprocessing function.

Training and serving both call ``preprocess``; its parameters (``PreprocessingSpec``)
are saved in each model's metadata, so a model trained at 28x28 and one trained at
224x224 are each fed what they were trained on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

# ITU-R BT.601 luma, the weights Pillow's "L" conversion uses too.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """How a model wants its input: size, channels and normalization.

    Pixels arrive in [0, 1]; the model sees ``(resized - mean) / std`` per channel.
    """
    height: int
    width: int
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessingSpec":
        return cls(height=int(data["height"]), width=int(data["width"]),
                   channels=int(data.get("channels", 1)),
                   mean=tuple(float(v) for v in data.get("mean", (0.0,))),
                   std=tuple(float(v) for v in data.get("std", (1.0,))))


def preprocess(pixels: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """Resize and normalize one image to the model's (height, width, channels) float32 input.

    ``pixels``: float in [0, 1], shape (H, W) or (H, W, 1) grayscale, or (H, W, 3) RGB.
    Color becomes gray by BT.601 luma for 1-channel models; gray is repeated for
    3-channel models. Resizing is Pillow's bilinear filter (antialiased when
    shrinking), one channel at a time on float data, so no precision is lost to 8 bits.
    """
    image = np.asarray(pixels, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        planes = [image]
    elif image.ndim == 3 and image.shape[2] == 3:
        planes = [image @ _LUMA] if spec.channels == 1 else [image[:, :, c] for c in range(3)]
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got shape {image.shape}")
    resized = [_resize(plane, spec.height, spec.width) for plane in planes]
    if spec.channels == 3 and len(resized) == 1:
        resized = resized * 3
    stacked = np.stack(resized, axis=-1)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((stacked - mean) / std).astype(np.float32, copy=False)


def _resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    if plane.shape == (height, width):
        return np.ascontiguousarray(plane, dtype=np.float32)
    resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F").resize(
        (width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)

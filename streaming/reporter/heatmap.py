"""An explanation heatmap (Grad-CAM) over the source image, as a DICOM Secondary Capture.

Grad-CAM (Selvaraju et al., 2017): the explained layer's feature maps weighted by the
spatial mean of the positive class score's gradient, summed, kept where positive. The
layer is the one the model's metadata names (``explained_layer``), by default the last
spatial feature map before pooling. The image is the source decoded and preprocessed
exactly as the job scores it (``streaming.imaging``), so the map explains that score.

The Secondary Capture is DERIVED\\SECONDARY with the annotation burned in: a colour
overlay on the source, and "NOT FOR DIAGNOSTIC USE" in the pixels and the series
description, so no viewer can show it as an image to read.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.preprocessing import preprocess
from streaming.imaging.types import ImageLimits
from streaming.modeling.loading import LoadedModel
from streaming.reporter.uids import derived_uid

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
HEATMAP_SERIES_NUMBER = 9902
MANUFACTURER = "medimg"
# Below this share of the map's maximum the overlay is transparent: only where the
# model looked is coloured, the rest of the source stays readable for orientation.
OVERLAY_FLOOR = 0.2
MIN_CAPTURE_WIDTH = 256


def explained_layer(loaded: LoadedModel) -> str:
    """The metadata's layer, else the last 4-D feature map that is not a pooling."""
    named = loaded.metadata.explained_layer
    if named:
        return named
    import keras  # noqa: PLC0415

    for layer in reversed(loaded.keras_model.layers):
        output = getattr(layer, "output", None)
        if (output is not None and len(output.shape) == 4
                and not isinstance(layer, (keras.layers.InputLayer, keras.layers.MaxPooling2D,
                                           keras.layers.AveragePooling2D))):
            return layer.name
    raise ValueError(f"{loaded.metadata.model_id} has no spatial layer to explain")


def grad_cam(loaded: LoadedModel, model_input: np.ndarray, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM of the positive class for one preprocessed input (H, W, C): float32
    (h, w) in [0, 1] at the explained layer's resolution (all zero if nothing is positive)."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415 - the gradient tape; the reporter runs on CPUs

    model = loaded.keras_model
    layer = model.get_layer(layer_name or explained_layer(loaded))
    probe = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    class_index = loaded.metadata.classes.index(loaded.metadata.positive_class)
    batch = tf.convert_to_tensor(model_input[np.newaxis].astype(np.float32))
    with tf.GradientTape() as tape:
        features, probabilities = probe(batch, training=False)
        score = probabilities[:, class_index]
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0].numpy()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32)


def source_pixels(source: Dataset) -> np.ndarray:
    """The source as the job decodes it: float32 display values in [0, 1]."""
    buffer = io.BytesIO()
    dcmwrite(buffer, source, enforce_file_format=True)
    return decode_image_bytes(buffer.getvalue(), "application/dicom", ImageLimits()).pixels


def explain(loaded: LoadedModel, source: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(display pixels of the source, Grad-CAM resized to them), both float32 in [0, 1]."""
    pixels = source_pixels(source)
    cam = grad_cam(loaded, preprocess(pixels, loaded.metadata.preprocessing))
    height, width = pixels.shape[:2]
    resized = np.asarray(Image.fromarray(cam, mode="F").resize(
        (width, height), resample=Image.Resampling.BILINEAR), dtype=np.float32)
    return pixels, np.clip(resized, 0.0, 1.0)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Blue-cyan-yellow-red ("jet"-like) RGB in [0, 1] for values in [0, 1]."""
    red = np.clip(1.5 - np.abs(4 * values - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * values - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * values - 1), 0, 1)
    return np.stack([red, green, blue], axis=-1)


def overlay(pixels: np.ndarray, cam: np.ndarray, caption: str) -> np.ndarray:
    """uint8 RGB: the source in gray, the map blended where it matters, the caption burned in."""
    gray = pixels if pixels.ndim == 2 else pixels.mean(axis=-1)
    base = np.repeat(gray[..., np.newaxis], 3, axis=-1)
    alpha = (np.clip((cam - OVERLAY_FLOOR) / (1 - OVERLAY_FLOOR), 0, 1) * 0.6)[..., np.newaxis]
    blended = base * (1 - alpha) + _colormap(cam) * alpha
    image = Image.fromarray(np.rint(blended * 255).astype(np.uint8), mode="RGB")
    # Small sources are enlarged by a whole factor so the warning is legible in full.
    factor = max(1, -(-MIN_CAPTURE_WIDTH // image.width))
    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for row, text in enumerate((NOT_FOR_DIAGNOSTIC_USE, caption)):
        top = 2 + row * 12
        box = draw.textbbox((2, top), text)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((2, top), text, fill=(255, 255, 0))
    return np.asarray(image)


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's PatientOrientation (the capture keeps its pixel layout); where it
    names none, the usual one of a frontal chest film displayed as read (rows run to the
    patient's left, columns to the feet), which highdicom requires for a patient image."""
    given = list(source.get("PatientOrientation") or [])
    return (given[0], given[1]) if len(given) == 2 else ("L", "F")


def build_heatmap(finding: dict, source: Dataset, loaded: LoadedModel) -> hd.sc.SCImage:
    """The Secondary Capture explaining ``finding`` (scored by ``loaded``) over ``source``."""
    finding_id = finding["finding_id"]
    model = finding["model"]
    pixels, cam = explain(loaded, source)
    caption = (f"Grad-CAM {loaded.metadata.positive_class} "
               f"{finding['scores'][loaded.metadata.positive_class]:.2f} v{model['version']}")
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=overlay(pixels, cam, caption),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=derived_uid(finding_id, "heatmap-series"),
        series_number=HEATMAP_SERIES_NUMBER,
        sop_instance_uid=derived_uid(finding_id, "heatmap"), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1")
    capture.ImageType = ["DERIVED", "SECONDARY"]
    capture.BurnedInAnnotation = "YES"
    capture.SeriesDescription = f"{NOT_FOR_DIAGNOSTIC_USE}: Grad-CAM of {model['name']} {model['version']}"
    capture.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. Explanation of finding {finding_id}."
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    return capture

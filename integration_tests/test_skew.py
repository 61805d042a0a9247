"""No training/serving skew: images scored by the streaming job score as offline evaluation did.

Validation images (PneumoniaMNIST's when the shared file is present, else quantized
phantoms) are written as DICOM files, published as events, and scored by the real
job; every finding's score must equal the offline evaluation's score for the same
image on the same backend, within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from batch_training.evaluation import evaluate_version
from batch_training.train import TrainingConfig, train_and_register
from streaming.local import phantoms
from streaming.local.reference_data import pneumoniamnist_path
from streaming.kafka.admin import ensure_topics
from streaming.tools.modality import event_for_file, publish_events
from streaming.kafka.outcomes import OutcomeLog

MODEL = "skew-cnn"
CLASSES = ("normal", "pneumonia")
VALIDATION_IMAGES = 160


def validation_npz(tmp_path):
    """A small uint8 MedMNIST-style npz: real chest X-rays when available."""
    path = tmp_path / "data.npz"
    shared = pneumoniamnist_path()
    if shared is not None:
        with np.load(shared) as data:
            # The file is ordered by class: sample, do not slice.
            rng = np.random.default_rng(0)
            train = np.sort(rng.choice(len(data["train_labels"]), 600, replace=False))
            val = np.sort(rng.choice(len(data["val_labels"]), VALIDATION_IMAGES, replace=False))
            arrays = {"train_images": data["train_images"][train],
                      "train_labels": data["train_labels"][train],
                      "val_images": data["val_images"][val], "val_labels": data["val_labels"][val]}
    else:
        arrays = {}
        for split, count, seed in (("train", 400, 3), ("val", VALIDATION_IMAGES, 4)):
            rng = np.random.default_rng(seed)
            labels = rng.permutation(np.arange(count) % 2)
            arrays[f"{split}_images"] = np.stack([
                np.round(phantoms.render_chest_phantom(rng, 28, lesion=bool(label)) * 255)
                for label in labels]).astype(np.uint8)
            arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays, class_names=np.array(CLASSES))
    return path, arrays["val_images"]


def write_chest_xray(path, pixels: np.ndarray) -> None:
    """8-bit DICOM whose standard window (128/256) displays exactly pixels / 255."""
    image = Dataset()
    image.SOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    image.SOPInstanceUID, image.StudyInstanceUID = generate_uid(), generate_uid()
    image.SeriesInstanceUID = generate_uid()
    image.Modality, image.BodyPartExamined = "CR", "CHEST"
    image.Rows, image.Columns = pixels.shape
    image.SamplesPerPixel, image.PhotometricInterpretation = 1, "MONOCHROME2"
    image.BitsAllocated, image.BitsStored, image.HighBit, image.PixelRepresentation = 8, 8, 7, 0
    image.WindowCenter, image.WindowWidth = 128, 256
    image.PixelData = pixels.astype(np.uint8).tobytes()
    image.file_meta = FileMetaDataset()
    image.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    image.file_meta.MediaStorageSOPClassUID = image.SOPClassUID
    image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
    image.save_as(path, enforce_file_format=True)


def test_streaming_scores_equal_offline_evaluation(kafka, topics, start_job, tmp_path):
    data, val_images = validation_npz(tmp_path)
    registry = tmp_path / "registry"
    train_and_register(TrainingConfig(data=str(data), model_registry=str(registry),
                                      model_name=MODEL, epochs=2, class_names=CLASSES,
                                      promote="always"), progress=False)
    _result, _labels, offline = evaluate_version(str(registry), MODEL, None, str(data), "val")

    files = tmp_path / "dicom"
    files.mkdir()
    for index, pixels in enumerate(val_images):
        write_chest_xray(files / f"{index:04d}.dcm", pixels)
    events = [event_for_file(files / f"{index:04d}.dcm", sender="SKEW_TEST")
              for index in range(len(val_images))]

    ensure_topics(kafka, {topics.events: 3})
    job = start_job("--model_registry", str(registry), "--model_name", MODEL)
    with OutcomeLog(kafka, topics.findings, topics.dead_letters) as log:
        publish_events(kafka, topics.events, events)
        assert log.wait_for([e.event_id for e in events], 300), job.log_tail()
    job.stop()

    served = np.array([log.by_event[e.event_id][0].document["scores"]["pneumonia"]
                       for e in events])
    assert len(served) == len(offline) == VALIDATION_IMAGES
    assert np.max(np.abs(served - offline)) <= 1e-4
    # Scores vary between images far more than the tolerance: the check is not vacuous.
    assert np.std(offline) > 10 * 1e-4

"""Synthetic DICOM studies with known truth: the demo's patients, since real ones cannot ship.

- ``render_chest_phantom``: a chest-radiograph-like image in [0, 1], with or without
  a round opacity in a lung field (the "lesion" the bootstrap model learns to find).
- ``render_ct_phantom``: an axial chest CT slice in Hounsfield units, a modality the
  chest model does not cover (it must come out ``not_applicable``).
- ``write_dicom``: a valid DICOM Part 10 file of either, in any transfer syntax
  pydicom can encode here (``encodable_transfer_syntaxes``).
- ``generate_study_set``: a folder of studies plus ``manifest.json``, the ground truth.
- ``phantom_training_set``: labeled phantoms decoded by the same function the
  streaming job uses, so a model trained on them sees exactly what it will serve.

Names and identifiers are synthetic; nothing here describes a real person.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder

from streaming.imaging.decoding import decode_image_bytes
from streaming.imaging.types import ImageLimits

PHANTOM_CLASSES = ("normal", "lesion")
POSITIVE_CLASS = "lesion"
DICOM_CONTENT_TYPE = "application/dicom"
MANIFEST_FILE = "manifest.json"

TRANSFER_SYNTAXES = {
    "explicit_le": dicom_uid.ExplicitVRLittleEndian,
    "implicit_le": dicom_uid.ImplicitVRLittleEndian,
    "deflate": dicom_uid.DeflatedExplicitVRLittleEndian,
    "rle": dicom_uid.RLELossless,
    "jpeg_ls_lossless": dicom_uid.JPEGLSLossless,
    "jpeg2000_lossless": dicom_uid.JPEG2000Lossless,
    "jpeg_lossless": dicom_uid.JPEGLosslessSV1,
}
SOP_CLASSES = {
    "CR": dicom_uid.ComputedRadiographyImageStorage,
    "DX": dicom_uid.DigitalXRayImageStorageForPresentation,
    "CT": dicom_uid.CTImageStorage,
}
# Stored CT values are HU + 1024, the usual unsigned encoding of a CT slice.
CT_RESCALE_INTERCEPT = -1024.0
CT_SOFT_TISSUE_WINDOW = (40.0, 400.0)


# -- rendering ----------------------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: x grows to the right, y downwards."""
    coords = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    return np.meshgrid(coords, coords)


def _soft_ellipse(x, y, cx, cy, rx, ry, edge: float = 0.08) -> np.ndarray:
    """1 inside the ellipse, 0 outside, with a linear ramp of ``edge`` (relative radius)."""
    distance = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1.0 - distance) / edge + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, scale: float) -> np.ndarray:
    """Low-frequency texture: a coarse random grid upsampled, so it looks alike at any size."""
    coarse = rng.normal(0.0, scale, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize(
        (size, size), resample=Image.Resampling.BICUBIC), dtype=np.float32)


def _lesion_centre(rng: np.random.Generator, lung: tuple[float, float, float, float],
                   heart: tuple[float, float, float, float]):
    """A point well inside one lung ellipse (cx, cy, rx, ry) and clear of the heart.

    Behind the heart a faint opacity is a hard case even for radiologists; the demo's
    truth should be one a small model can learn from a few hundred images.
    """
    cx, cy, rx, ry = lung
    hx, hy, hrx, hry = heart
    while True:
        u, v = rng.uniform(-0.65, 0.65, 2)
        x, y = cx + u * rx, cy + v * ry
        clear_of_heart = ((x - hx) / (hrx + 0.15)) ** 2 + ((y - hy) / (hry + 0.15)) ** 2 > 1
        if u * u + v * v <= 0.65 ** 2 and clear_of_heart:
            return x, y


def render_chest_phantom(rng: np.random.Generator, size: int, lesion: bool) -> np.ndarray:
    """A frontal chest-radiograph-like phantom, float32 (size, size) in [0, 1], bright = dense.

    Body outline, two darker lung fields, mediastinum and heart, spine, ribs and
    smooth mottle, all jittered per draw. ``lesion=True`` adds a soft round opacity
    (4-7.5% of the image width in radius) at a random place inside one lung field:
    a blob of many pixels against textured lung, not a single-pixel cue.
    """
    x, y = _grid(size)
    image = np.full((size, size), 0.04, dtype=np.float32)
    body = _soft_ellipse(x, y, 0.0, 0.08, rng.uniform(0.84, 0.92), rng.uniform(0.95, 1.05))
    image += body * rng.uniform(0.48, 0.56)

    lungs = []
    for side in (-1.0, 1.0):
        lung = (side * rng.uniform(0.33, 0.39), rng.uniform(-0.1, 0.0),
                rng.uniform(0.23, 0.28), rng.uniform(0.5, 0.58))
        lungs.append(lung)
        image -= _soft_ellipse(x, y, *lung, edge=0.12) * rng.uniform(0.26, 0.32)
    lung_fields = np.maximum(*(_soft_ellipse(x, y, *lung) for lung in lungs))

    # Mediastinum and spine: a bright vertical band; the heart bulges to one side.
    image += np.clip((0.11 - np.abs(x)) / 0.04, 0, 1) * (y > -0.7) * 0.14
    image += np.clip((0.045 - np.abs(x)) / 0.02, 0, 1) * 0.08
    heart = (rng.uniform(0.08, 0.14), rng.uniform(0.25, 0.35),
             rng.uniform(0.2, 0.25), rng.uniform(0.17, 0.22))
    image += _soft_ellipse(x, y, *heart, edge=0.2) * 0.12

    # Ribs: faint curved bands across the lungs, the usual distractors of a chest film.
    spacing = rng.uniform(0.16, 0.2)
    phase = rng.uniform(0, spacing)
    rib_rows = np.mod(y - 0.35 * x ** 2 + phase, spacing) / spacing
    image += (np.abs(rib_rows - 0.5) < 0.12) * lung_fields * 0.05

    if lesion:
        cx, cy = _lesion_centre(rng, lungs[rng.integers(2)], heart)
        radius = rng.uniform(0.08, 0.15)
        image += _soft_ellipse(x, y, cx, cy, radius, radius * rng.uniform(0.85, 1.15),
                               edge=0.5) * rng.uniform(0.2, 0.3)

    image += _smooth_noise(rng, size, cells=12, scale=0.025)
    image += rng.normal(0.0, 0.01, (size, size)).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_ct_phantom(rng: np.random.Generator, size: int) -> np.ndarray:
    """An axial chest CT slice, float32 (size, size) in Hounsfield units (-1000 air .. ~700 bone).

    Body with a fat rim, two air-filled lungs, mediastinal soft tissue, aorta, spine.
    """
    x, y = _grid(size)
    hu = np.full((size, size), -1000.0, dtype=np.float32)

    def paint(mask: np.ndarray, value: float) -> None:
        hu[:] = hu * (1 - mask) + value * mask

    rx, ry = rng.uniform(0.82, 0.9), rng.uniform(0.6, 0.68)
    paint(_soft_ellipse(x, y, 0, 0, rx, ry, edge=0.02), -100.0)
    paint(_soft_ellipse(x, y, 0, 0, rx - 0.06, ry - 0.06, edge=0.04), 40.0)
    for side in (-1.0, 1.0):
        paint(_soft_ellipse(x, y, side * rng.uniform(0.34, 0.4), rng.uniform(-0.08, 0.0),
                            rng.uniform(0.24, 0.28), rng.uniform(0.38, 0.44), edge=0.05), -850.0)
    paint(_soft_ellipse(x, y, 0.08, 0.22, 0.06, 0.06, edge=0.1), 160.0)  # contrast-filled aorta
    paint(_soft_ellipse(x, y, 0.0, 0.45, 0.1, 0.1, edge=0.1), 700.0)  # vertebral body
    hu += _smooth_noise(rng, size, cells=16, scale=6.0)
    hu += rng.normal(0.0, 12.0, (size, size)).astype(np.float32)
    # Within what 12-bit stored values with intercept -1024 can carry, as a scanner clips.
    return np.clip(hu, -1024.0, 3071.0)


# -- writing DICOM -------------------------------------------------------------------

def encodable_transfer_syntaxes() -> tuple[str, ...]:
    """Names of the ``TRANSFER_SYNTAXES`` pydicom can write with the packages installed here.

    Native encodings always; compressed ones when their encoder plugin is present
    (RLE and JPEG 2000 via pylibjpeg, JPEG-LS via pyjpegls). JPEG Lossless has no
    encoder in pydicom, so it is never offered.
    """
    native = (dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian,
              dicom_uid.DeflatedExplicitVRLittleEndian)
    available = []
    for name, transfer_syntax in TRANSFER_SYNTAXES.items():
        if transfer_syntax in native:
            available.append(name)
            continue
        try:
            encoder = get_encoder(transfer_syntax)
        except NotImplementedError:
            continue
        if encoder.is_available:
            available.append(name)
    return tuple(available)


def _stored_values(pixels: np.ndarray, modality: str, photometric: str, bits: int) -> np.ndarray:
    """Unsigned stored values: [0, 1] scaled to ``bits`` for radiographs, HU + 1024 for CT.

    MONOCHROME1 stores the inverse (0 = white), as detectors that write it do.
    """
    maximum = 2 ** bits - 1
    if modality == "CT":
        stored = np.rint(np.asarray(pixels, dtype=np.float64) - CT_RESCALE_INTERCEPT)
    else:
        stored = np.rint(np.clip(pixels, 0.0, 1.0) * maximum)
        if photometric == "MONOCHROME1":
            stored = maximum - stored
    return np.clip(stored, 0, maximum).astype(np.uint16)


def _window(modality: str, bits: int, window: bool | tuple[float, float]):
    """(center, width) to write, or None. The default for radiographs is the full stored
    range, which pydicom's linear VOI maps back onto the rendered values exactly."""
    if window is False or window is None:
        return None
    if window is not True:
        return tuple(float(v) for v in window)
    if modality == "CT":
        return CT_SOFT_TISSUE_WINDOW
    return (2.0 ** (bits - 1), 2.0 ** bits)


def _image_dataset(stored: np.ndarray, *, modality: str, photometric: str, bits: int,
                   study_uid: str, series_uid: str, sop_uid: str, body_part: str,
                   patient_name: str, patient_id: str, study_date: str,
                   series_number: int, instance_number: int) -> Dataset:
    """The patient, study, series and image-pixel modules of one single-frame image."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "PHANTOM"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic phantom (medimg demo)"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.Manufacturer = "medimg phantom generator"
    ds.ImageType = ["DERIVED", "SECONDARY"] if modality == "CT" else ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def write_dicom(destination: str | Path | BinaryIO, pixels: np.ndarray, *, modality: str,
                study_uid: str, series_uid: str, sop_uid: str,
                transfer_syntax: str = "explicit_le", photometric: str = "MONOCHROME2",
                body_part: str = "CHEST", bits: int = 12,
                window: bool | tuple[float, float] = True,
                patient_name: str = "PHANTOM^DEMO", patient_id: str = "PHANTOM-0001",
                study_date: str = "20240101", series_number: int = 1,
                instance_number: int = 1) -> None:
    """Write one image as a DICOM Part 10 file (a path, or a binary buffer such as BytesIO).

    ``pixels``: (H, W) float, display values in [0, 1] for CR/DX, Hounsfield units for
    CT (stored with RescaleIntercept -1024). ``window``: True writes a default
    WindowCenter/Width (radiographs: the full stored range, so VOI returns the
    rendered values; CT: soft tissue 40/400), False none, or an explicit
    (center, width). ``transfer_syntax``: one of ``encodable_transfer_syntaxes()``.
    """
    modality = modality.upper()
    if modality not in SOP_CLASSES:
        raise ValueError(f"unsupported modality {modality!r}; choose one of "
                         f"{', '.join(SOP_CLASSES)}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if modality == "CT" and photometric != "MONOCHROME2":
        raise ValueError("CT phantoms are written MONOCHROME2 (HU rise with brightness)")
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be between 8 and 16, got {bits}")
    if transfer_syntax not in encodable_transfer_syntaxes():
        raise ValueError(f"cannot encode transfer syntax {transfer_syntax!r} here; available: "
                         f"{', '.join(encodable_transfer_syntaxes())} (JPEG-LS needs pyjpegls, "
                         "JPEG 2000 pylibjpeg-openjpeg)")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected one (H, W) frame, got shape {pixels.shape}")

    stored = _stored_values(pixels, modality, photometric, bits)
    ds = _image_dataset(stored, modality=modality, photometric=photometric, bits=bits,
                        study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                        body_part=body_part, patient_name=patient_name,
                        patient_id=patient_id, study_date=study_date,
                        series_number=series_number, instance_number=instance_number)
    if modality == "CT":
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
    voi = _window(modality, bits, window)
    if voi is not None:
        ds.WindowCenter, ds.WindowWidth = voi

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    syntax_uid = TRANSFER_SYNTAXES[transfer_syntax]
    if syntax_uid.is_compressed:
        ds.compress(syntax_uid, stored, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax_uid
        ds.PixelData = stored.tobytes()
    ds.save_as(destination, enforce_file_format=True)


# -- study sets ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PhantomCase:
    """One written image and its ground truth. ``expected_label`` is None where the chest
    model does not apply (CT): the pipeline must answer ``not_applicable`` there."""
    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str
    body_part: str
    expected_label: str | None
    transfer_syntax: str
    photometric: str

    def manifest_entry(self, root: Path) -> dict:
        entry = dataclasses.asdict(self)
        entry["path"] = self.path.relative_to(root).as_posix()
        return entry


def _phantom_uid(seed: int, *parts: object) -> str:
    """A UID derived from the seed, so the same seed writes byte-identical files.

    Under pydicom's UID root: with ``prefix=None`` pydicom ignores the entropy sources.
    """
    return dicom_uid.generate_uid(entropy_srcs=["medimg-phantom", str(seed), *map(str, parts)])


def _study_plan(rng: np.random.Generator, n_studies: int) -> list[tuple[str, bool, int]]:
    """(modality, lesion, image count) per study: about one in eight CT, the rest
    CR/DX chest with half of them showing a lesion."""
    n_ct = max(1, n_studies // 8) if n_studies >= 4 else 0
    ct_slots = set(np.linspace(n_studies - 1, 0, n_ct, endpoint=False).astype(int).tolist())
    n_chest = n_studies - len(ct_slots)
    lesions = iter(rng.permutation(np.arange(n_chest) % 2 == 1).tolist())
    plan = []
    for index in range(n_studies):
        if index in ct_slots:
            plan.append(("CT", False, int(rng.integers(2, 4))))
        else:
            modality = ("CR", "DX")[int(rng.integers(2))]
            plan.append((modality, next(lesions), int(rng.choice([1, 1, 2]))))
    return plan


def generate_study_set(out_dir: str | Path, n_studies: int = 24, *, seed: int = 7,
                       size: int = 128) -> list[PhantomCase]:
    """Write ``n_studies`` phantom studies under ``out_dir`` plus ``manifest.json``.

    Chest CR/DX images (about half with a lesion) cycle through every encodable
    transfer syntax and both MONOCHROME1/2; a few CT studies hold several slices.
    The same seed writes the same files. Returns the cases in writing order.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    syntaxes = encodable_transfer_syntaxes()
    cases: list[PhantomCase] = []
    for study_index, (modality, lesion, n_images) in enumerate(_study_plan(rng, n_studies)):
        study_uid = _phantom_uid(seed, "study", study_index)
        series_uid = _phantom_uid(seed, "series", study_index)
        study_dir = out_dir / f"study_{study_index:03d}"
        study_dir.mkdir(parents=True, exist_ok=True)
        for image_index in range(n_images):
            turn = len(cases)
            syntax = syntaxes[turn % len(syntaxes)]
            if modality == "CT":
                pixels, photometric, label = render_ct_phantom(rng, size), "MONOCHROME2", None
            else:
                pixels = render_chest_phantom(rng, size, lesion)
                photometric = ("MONOCHROME2", "MONOCHROME1")[(turn // len(syntaxes)) % 2]
                label = POSITIVE_CLASS if lesion else "normal"
            sop_uid = _phantom_uid(seed, "image", study_index, image_index)
            path = study_dir / f"image_{image_index + 1:02d}.dcm"
            write_dicom(path, pixels, modality=modality, study_uid=study_uid,
                        series_uid=series_uid, sop_uid=sop_uid, transfer_syntax=syntax,
                        photometric=photometric, patient_id=f"PHANTOM-{study_index + 1:04d}",
                        instance_number=image_index + 1)
            cases.append(PhantomCase(path, study_uid, series_uid, sop_uid, modality, "CHEST",
                                     label, syntax, photometric))
    _write_manifest(out_dir, cases, seed=seed, size=size)
    return cases


def _write_manifest(out_dir: Path, cases: Sequence[PhantomCase], *, seed: int, size: int):
    manifest = {"generator": "streaming.local.phantoms", "seed": seed, "size": size,
                "classes": list(PHANTOM_CLASSES), "positive_class": POSITIVE_CLASS,
                "cases": [case.manifest_entry(out_dir) for case in cases]}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(out_dir: str | Path) -> list[PhantomCase]:
    """The cases a ``generate_study_set`` folder's manifest.json describes."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    return [PhantomCase(**{**entry, "path": out_dir / entry["path"]})
            for entry in manifest["cases"]]


# -- training data -------------------------------------------------------------------

def phantom_training_set(n: int, *, size: int = 64, seed: int = 0,
                         limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labeled chest phantoms, half with a lesion, as the streaming job decodes them.

    Each phantom is written as DICOM in memory (cycling transfer syntaxes and
    MONOCHROME1/2, CR and DX) and read back with ``decode_image_bytes``. Returns
    (pixels float32 (n, size, size) in [0, 1], labels int64 (n,)), where label i is
    the index into ``PHANTOM_CLASSES`` (1 = lesion).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    syntaxes = encodable_transfer_syntaxes()
    study_uid, series_uid = dicom_uid.generate_uid(), dicom_uid.generate_uid()
    pixels = np.empty((n, size, size), dtype=np.float32)
    for index, label in enumerate(labels):
        buffer = io.BytesIO()
        write_dicom(buffer, render_chest_phantom(rng, size, lesion=bool(label)),
                    modality=("CR", "DX")[index % 2], study_uid=study_uid,
                    series_uid=series_uid, sop_uid=dicom_uid.generate_uid(),
                    transfer_syntax=syntaxes[index % len(syntaxes)],
                    photometric=("MONOCHROME2", "MONOCHROME1")[(index // len(syntaxes)) % 2],
                    instance_number=index + 1)
        pixels[index] = decode_image_bytes(buffer.getvalue(), DICOM_CONTENT_TYPE, limits).pixels
    return pixels, labels


def write_phantom_npz(path: str | Path, n_train: int, n_val: int, *, size: int = 64,
                      seed: int = 0) -> Path:
    """Save a phantom training set in the MedMNIST-style layout ``load_npz`` reads.

    Images are stored as float32 in [0, 1] (not uint8), so training sees the decoded
    values unrounded; ``class_names`` travels in the file.
    """
    train_x, train_y = phantom_training_set(n_train, size=size, seed=seed)
    val_x, val_y = phantom_training_set(n_val, size=size, seed=seed + 1)
    path = Path(path)
    np.savez(path, train_images=train_x, train_labels=train_y, val_images=val_x,
             val_labels=val_y, class_names=np.array(PHANTOM_CLASSES))
    return path

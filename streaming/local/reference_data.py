"""Real data at hand, found where it lies and never copied into the repository.

- ``scanner_files``: the DICOM test files of pydicom and pydicom-data (many vendors,
  modalities and encodings, no real patients). Listed from the installed packages
  only: ``pydicom.data.get_testdata_files("*")`` would try to download what is
  missing (about 90 files), which fails offline after a long wait and makes the
  corpus depend on the network where it succeeds.
- ``pneumoniamnist_path``: PneumoniaMNIST (MedMNIST v2, CC BY 4.0) in the shared data
  folder: ``$MEDIMG_SHARED_DATA``, else ``../shared/data`` next to the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

PNEUMONIAMNIST = "pneumoniamnist_trainval.npz"


class ScannerFilesMissing(RuntimeError):
    """pydicom-data is not installed."""


def scanner_files() -> list[Path]:
    """Every file pydicom and pydicom-data hold locally, sorted by name."""
    from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources  # noqa: PLC0415

    paths = {Path(p) for p in (Path(DATA_ROOT) / "test_files").glob("*")}
    source = external_data_sources().get("pydicom-data")
    if source is None:
        raise ScannerFilesMissing("pydicom-data is not installed: pip install pydicom-data "
                                  "(make venv installs it)")
    paths |= {Path(p) for p in source.get_paths("*", DataTypes.DATASET)}
    return sorted((p for p in paths if p.is_file()), key=lambda p: p.name)


def shared_data_dir() -> Path:
    """``$MEDIMG_SHARED_DATA``, else ``<repository>/../shared/data``."""
    if os.environ.get("MEDIMG_SHARED_DATA"):
        return Path(os.environ["MEDIMG_SHARED_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def pneumoniamnist_path() -> Path | None:
    """The PneumoniaMNIST train/val file, or None where it is absent (e.g. a user's machine)."""
    path = shared_data_dir() / PNEUMONIAMNIST
    return path if path.is_file() else None

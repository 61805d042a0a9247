"""Real scanner files on this machine: the DICOM test files of pydicom and pydicom-data.

Real patient studies cannot ship with the product; these files (many vendors,
modalities and encodings, no real patients) are what tests and benchmarks decode.
Listed from the installed packages only: ``pydicom.data.get_testdata_files("*")``
would try to download what is missing (about 90 files), which fails offline after
a long wait and makes the corpus depend on the network where it succeeds.
"""

from __future__ import annotations

from pathlib import Path


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

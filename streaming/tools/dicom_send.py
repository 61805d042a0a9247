"""A simulated modality that speaks DICOM: files sent with C-STORE, as a scanner would.

dcmtk's ``storescu`` where it is installed (Debian ``dcmtk``), else pynetdicom's SCU.
Each file is sent in its own transfer syntax, never transcoded; the answer for each is
its DICOM status (0x0000 success), or None when the association failed.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

import pydicom

# storescu proposes one compressed transfer syntax per run (plus the uncompressed ones).
STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd"}


@dataclasses.dataclass(frozen=True)
class Sent:
    path: Path
    status: int | None

    @property
    def ok(self) -> bool:
        return self.status == 0


def transfer_syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def storescu_available() -> bool:
    return shutil.which("storescu") is not None


def send_files(paths: Iterable[Path], *, host: str, port: int, called_ae: str,
               calling_ae: str, use_dcmtk: bool | None = None,
               on_sent: Callable[[Sent], None] | None = None) -> list[Sent]:
    """Send each file with C-STORE; ``use_dcmtk`` None means dcmtk where installed."""
    use_dcmtk = storescu_available() if use_dcmtk is None else use_dcmtk
    send = _send_dcmtk if use_dcmtk else _send_pynetdicom
    return send([Path(p) for p in paths], host, port, called_ae, calling_ae,
                on_sent or (lambda _sent: None))


def _send_dcmtk(paths, host, port, called_ae, calling_ae, on_sent) -> list[Sent]:
    results = []
    for path in paths:
        proposal = STORESCU_PROPOSAL.get(transfer_syntax_of(path), "-x=")
        done = subprocess.run(["storescu", proposal, "-aet", calling_ae, "-aec", called_ae,
                               host, str(port), str(path)], capture_output=True, text=True,
                              timeout=120)
        results.append(Sent(path, 0 if done.returncode == 0 else None))
        on_sent(results[-1])
    return results


def _send_pynetdicom(paths, host, port, called_ae, calling_ae, on_sent) -> list[Sent]:
    from pynetdicom import AE  # noqa: PLC0415 - the gateway extra

    ae = AE(ae_title=calling_ae)
    datasets = [(path, pydicom.dcmread(path)) for path in paths]
    for _path, dataset in datasets:
        pair = (str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID))
        if pair not in {(str(c.abstract_syntax), c.transfer_syntax[0])
                        for c in ae.requested_contexts}:
            ae.add_requested_context(*pair)
    association = ae.associate(host, port, ae_title=called_ae)
    results = []
    try:
        for path, dataset in datasets:
            status = association.send_c_store(dataset) if association.is_established else None
            results.append(Sent(path, int(status.Status) if status else None))
            on_sent(results[-1])
    finally:
        if association.is_established:
            association.release()
    return results

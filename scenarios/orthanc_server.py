"""A real Orthanc PACS with its DICOMweb plugin on free loopback ports, for tests and the bench.

Debian packages ``orthanc`` and ``orthanc-dicomweb``; the package does not start it,
so each user of this class gets its own server and storage folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from streaming.local.broker import LOOPBACK, free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def missing_orthanc() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else what to install."""
    if not (shutil.which(ORTHANC) or os.path.exists(ORTHANC)):
        return "Orthanc is not installed (Debian package orthanc)"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


class OrthancServer:
    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> "OrthancServer":
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "MEDIMG_TEST", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomAet": "ORTHANC", "DicomModalities": {},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        with open(self.workdir / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start; see {self.workdir}/orthanc.log")
            time.sleep(0.1)

    def instance_count(self) -> int:
        return len(requests.get(f"{self.url}/instances", timeout=10).json())

    def upload(self, dicom_bytes: bytes) -> None:
        requests.post(f"{self.url}/instances", data=dicom_bytes, timeout=30).raise_for_status()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

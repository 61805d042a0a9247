"""Real DICOM peers of the gateway: dcmtk's command-line SCUs (a modality) and an
Orthanc server on loopback ports (a PACS), both from Debian packages.

``dicom_binary`` finds a program or says which Debian package provides it;
``OrthancServer`` writes its configuration, starts ``Orthanc`` and waits for its
REST API, with the gateway declared as a DICOM modality it may send to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from streaming.local.broker import LOOPBACK, free_port, port_is_open

DEBIAN_PACKAGES = {"echoscu": "dcmtk", "storescu": "dcmtk", "Orthanc": "orthanc",
                   "libOrthancDicomWeb.so": "orthanc-dicomweb"}
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class PeerMissing(RuntimeError):
    """A DICOM program is not installed; the message names its Debian package."""


def dicom_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        raise PeerMissing(f"{name} is not installed: apt-get install {package} "
                          f"(Debian package {package!r})")
    return path


def run_scu(name: str, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Run a dcmtk SCU verbosely; its output says what the peer answered."""
    return subprocess.run([dicom_binary(name), "-v", *args], capture_output=True, text=True,
                          timeout=timeout_s)


class OrthancServer:
    """Orthanc with DICOM and HTTP on free loopback ports and one target modality."""

    def __init__(self, workdir: str | Path, modalities: dict[str, tuple[str, str, int]],
                 ae_title: str = "ORTHANC", dicomweb_servers: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = ae_title
        self.modalities = modalities  # name -> (AE title, host, port)
        self.dicomweb_servers = dicomweb_servers or {}  # name -> base URL (STOW-RS targets)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def start(self, timeout_s: float = 60.0) -> "OrthancServer":
        binary = dicom_binary("Orthanc")
        if self.dicomweb_servers and not Path(ORTHANC_DICOMWEB_PLUGIN).is_file():
            raise PeerMissing(f"{ORTHANC_DICOMWEB_PLUGIN} is not installed: apt-get install "
                              "orthanc-dicomweb (Debian package 'orthanc-dicomweb')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medimg-test-pacs", "DicomAet": self.ae_title,
            "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN] if self.dicomweb_servers else [],
        }
        if self.dicomweb_servers:
            config["DicomWeb"] = {"Enable": True, "Servers": {
                name: [url] for name, url in self.dicomweb_servers.items()}}
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
        with open(self.workdir / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen([binary, str(self.workdir / "orthanc.json")],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not (port_is_open(self.http_port) and self._answers()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start; see {self.workdir}/orthanc.log")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes, content_type: str = "application/json",
             timeout_s: float = 120.0):
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    def upload(self, path: Path) -> dict:
        """Store one file in Orthanc (as a modality's send would)."""
        return self.post("/instances", Path(path).read_bytes(), "application/dicom")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

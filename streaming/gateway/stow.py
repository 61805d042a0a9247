"""DICOMweb STOW-RS: ``POST /studies`` (or ``/studies/{StudyInstanceUID}``) with a
``multipart/related; type="application/dicom"`` body, each part one instance.

Parts are streamed to temporary files as they arrive (bounded memory) and handed to
the same ``Intake`` as C-STORE. The answer is a DICOM JSON document listing stored
instances (ReferencedSOPSequence) and failed ones (FailedSOPSequence with the DICOM
status as FailureReason): 200 when all were stored, 202 when some were, 409 when none
could be, 503 with Retry-After when none could be for a reason that passes (broker).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO, Iterator

from streaming.gateway import metrics
from streaming.gateway.config import GatewayConfig
from streaming.gateway.dimse import status_for
from streaming.gateway.intake import Intake, Refusal

LOG = logging.getLogger(__name__)

SENDER = "DICOMWEB"  # HTTP has no AE title; events name the protocol as their sender
_CHUNK = 256 * 1024
_PATH = re.compile(r"^/studies(/[0-9.]{1,64})?/?$")


class BadRequest(Exception):
    pass


class ChunkedBody:
    """The body of a ``Transfer-Encoding: chunked`` request as a plain stream (Orthanc's
    DICOMweb client and many PACS send chunked)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.left = 0       # bytes left in the current chunk
        self.done = False

    def read(self, n: int) -> bytes:
        if self.done:
            return b""
        if self.left == 0:
            size_line = self.raw.readline(1024)
            try:
                self.left = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("a chunk size is not hexadecimal") from None
            if self.left == 0:
                while self.raw.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
        data = self.raw.read(min(n, self.left))
        if not data:
            raise BadRequest("the body ends inside a chunk")
        self.left -= len(data)
        if self.left == 0:
            self.raw.readline(1024)  # the CRLF after each chunk
        return data


def multipart_parts(body: BinaryIO, boundary: bytes,
                    length: int | None) -> Iterator[BinaryIO]:
    """Each part's content as a temporary file (rewound), read from ``length`` bytes of
    ``body`` (None: to its end, for a chunked body)."""
    remaining = [length if length is not None else float("inf")]

    def read(n: int) -> bytes:
        data = body.read(min(n, remaining[0])) if remaining[0] > 0 else b""
        remaining[0] -= len(data)
        return data

    buffer = b""
    first = b"--" + boundary
    delimiter = b"\r\n--" + boundary
    while len(buffer) < len(first) + 2:
        data = read(_CHUNK)
        if not data:
            raise BadRequest("the body ends before its first boundary")
        buffer += data
    start = buffer.find(first)
    if start < 0:
        raise BadRequest("the body does not start with the boundary of its Content-Type")
    buffer = buffer[start + len(first):]
    while True:
        while len(buffer) < 2:
            data = read(_CHUNK)
            if not data:
                raise BadRequest("the body ends inside a boundary line")
            buffer += data
        if buffer.startswith(b"--"):
            return  # the closing boundary
        # Part headers end at the first empty line.
        while b"\r\n\r\n" not in buffer:
            data = read(_CHUNK)
            if not data or len(buffer) > 64 * 1024:
                raise BadRequest("a part's headers do not end")
            buffer += data
        headers, buffer = buffer.split(b"\r\n\r\n", 1)
        content_type = next((line.split(b":", 1)[1].strip().lower()
                             for line in headers.split(b"\r\n")
                             if line.lower().startswith(b"content-type:")), b"application/dicom")
        if not content_type.startswith(b"application/dicom"):
            raise BadRequest("only application/dicom parts are accepted")
        part = tempfile.TemporaryFile()
        while True:
            found = buffer.find(delimiter)
            if found >= 0:
                part.write(buffer[:found])
                buffer = buffer[found + len(delimiter):]
                break
            # Keep a delimiter's length back: it may straddle two reads.
            keep = len(delimiter)
            part.write(buffer[:-keep])
            buffer = buffer[-keep:]
            data = read(_CHUNK)
            if not data:
                part.close()
                raise BadRequest("the body ends inside a part")
            buffer += data
        part.seek(0)
        yield part


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """One structured line instead of the base class's traceback on stderr (a failed
        TLS handshake, a client that went away)."""
        import sys  # noqa: PLC0415

        error = sys.exc_info()[1]
        LOG.warning("STOW-RS connection failed", extra={
            "peer_address": client_address[0], "error": type(error).__name__})


class StowServer:
    def __init__(self, config: GatewayConfig, intake: Intake):
        self.config = config
        self.intake = intake
        handler = type("StowHandler", (_StowHandler,), {"intake": intake, "config": config})
        self.server = _Server((config.host, config.dicomweb_port or 0), handler)
        self.server.daemon_threads = True
        if config.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(config.tls.certfile, config.tls.keyfile)
            if config.tls.cafile:
                context.load_verify_locations(config.tls.cafile)
                context.verify_mode = ssl.CERT_REQUIRED
            # The handshake runs in each request's thread (see _StowHandler.setup): done
            # at accept, one stalled client would hold up every other.
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.server.serve_forever, name="stow-rs",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> "StowServer":
        self._thread.start()
        LOG.info("STOW-RS listening", extra={"host": self.config.host, "port": self.port,
                                             "path": "/studies"})
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _StowHandler(BaseHTTPRequestHandler):
    intake: Intake
    config: GatewayConfig
    protocol_version = "HTTP/1.1"

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(30)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        """The base class prints request lines (with study UIDs) to stderr; we do not."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        if not _PATH.match(self.path.split("?", 1)[0]):
            return self._answer(404, {"error": "STOW-RS is served at /studies"})
        content_type = self.headers.get("Content-Type", "")
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if not content_type.lower().startswith("multipart/related") or boundary is None:
            return self._answer(415, {"error": 'send multipart/related; type="application/'
                                               'dicom" with a boundary'})
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if self.headers.get("Content-Length") is None and not chunked:
            return self._answer(411, {"error": "send a Content-Length or a chunked body"})
        body, length = ((ChunkedBody(self.rfile), None) if chunked
                        else (self.rfile, int(self.headers["Content-Length"])))
        referenced, failed, retry_later = [], [], False
        try:
            for part in multipart_parts(body, boundary.group(1).encode(), length):
                with part:
                    received_at = time.monotonic()
                    try:
                        accepted = self.intake.accept(part, sender=SENDER, protocol="stow",
                                                      received_at=received_at)
                    except Refusal as refusal:
                        failed.append(_failed_item(status_for(refusal)))
                        retry_later = retry_later or refusal.retry
                        continue
                    referenced.append(_referenced_item(accepted.event.sop_instance_uid))
        except (BadRequest, ValueError) as error:
            metrics.refused("bad_request")
            self.close_connection = True
            return self._answer(400, {"error": str(error)})
        document = {}
        if referenced:
            document["00081199"] = {"vr": "SQ", "Value": referenced}
        if failed:
            document["00081198"] = {"vr": "SQ", "Value": failed}
        if not failed:
            return self._answer(200, document)
        if referenced:
            return self._answer(202, document)
        if retry_later:
            return self._answer(503, document, {"Retry-After": "30"})
        return self._answer(409, document)

    def _answer(self, status: int, document: dict, headers: dict | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _referenced_item(sop_instance_uid: str) -> dict:
    return {"00081155": {"vr": "UI", "Value": [sop_instance_uid]}}


def _failed_item(status: int) -> dict:
    return {"00081197": {"vr": "US", "Value": [status]}}

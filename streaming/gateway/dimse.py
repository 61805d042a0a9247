"""The DICOM network side: a C-STORE and C-ECHO SCP (pynetdicom) in front of ``Intake``.

Presentation contexts are pynetdicom's storage SOP classes with the usual transfer
syntaxes (uncompressed, deflate, RLE, JPEG, JPEG-LS, JPEG 2000), plus Verification.
Datasets are received to a temporary file (pynetdicom's chunked receive), never held
in memory. Associations from AE titles or addresses not configured are rejected.
"""

from __future__ import annotations

import logging
import ssl
import time

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from streaming.gateway import metrics
from streaming.gateway.config import GatewayConfig
from streaming.gateway.intake import Intake, Refusal

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700      # Refused: Out of Resources; the sender retries later
CANNOT_UNDERSTAND = 0xC000     # Error: Cannot understand; resending will not help
# Rejection of an association: permanent, by the service user, calling AE not recognised.
_REJECT_CALLER = (0x01, 0x01, 0x03)

# Large instances go to disk as they arrive, whatever their size.
_config.STORE_RECV_CHUNKED_DATASET = True
# pynetdicom logs datasets (header values: patient identity) at DEBUG; keep it quieter.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def status_for(refusal: Refusal) -> int:
    return OUT_OF_RESOURCES if refusal.retry or refusal.reason == "too_large" else (
        CANNOT_UNDERSTAND)


class StoreScp:
    """The application entity; ``start`` listens in background threads, ``stop`` ends it."""

    def __init__(self, config: GatewayConfig, intake: Intake):
        self.config = config
        self.intake = intake
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = config.max_pdu
        # The handler answers within the broker wait; the sender's own timeout is longer.
        self.ae.dimse_timeout = max(30.0, config.broker_timeout_s * 3)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, _TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._server = None

    def start(self) -> "StoreScp":
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store)]
        self._server = self.ae.start_server((self.config.host, self.config.port), block=False,
                                            evt_handlers=handlers,
                                            ssl_context=self._ssl_context())
        LOG.info("DICOM SCP listening", extra={"ae_title": self.config.ae_title,
                                                "host": self.config.host,
                                                "port": self.port,
                                                "tls": self.config.tls is not None})
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.config.port

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop listening, then let associations in progress finish (up to ``drain_s``):
        their senders get answers instead of a dropped connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and any(
                assoc.is_established for assoc in self.ae.active_associations):
            time.sleep(0.1)

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.certfile, tls.keyfile)
        if tls.cafile:
            context.load_verify_locations(tls.cafile)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _on_requested(self, event) -> None:
        calling = event.assoc.requestor.primitive.calling_ae_title.strip()
        address = event.assoc.requestor.address
        caller = self.config.callers.get(calling)
        if caller is None or not caller.admits(address):
            reason = "calling_ae_not_allowed" if caller is None else "address_not_allowed"
            metrics.refused(reason)
            LOG.warning("association rejected", extra={"reason": reason,
                                                       "calling_ae_title": calling[:16],
                                                       "peer_address": address})
            event.assoc.acse.send_reject(*_REJECT_CALLER)
            # Waits until the rejection is on the wire, before the socket is closed.
            event.assoc.kill()

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event):
        received_at = time.monotonic()
        sender = event.assoc.requestor.ae_title.strip()
        try:
            with open(event.dataset_path, "rb") as received:
                self.intake.accept(received, sender=sender, protocol="dimse",
                                   received_at=received_at)
        except Refusal as refusal:
            status = _status_dataset(status_for(refusal), refusal.message)
            return status
        return SUCCESS


def _status_dataset(code: int, comment: str):
    from pydicom import Dataset  # noqa: PLC0415

    status = Dataset()
    status.Status = code
    # Error Comment is LO: at most 64 characters; ours never quote header values.
    status.ErrorComment = comment[:64]
    return status


_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.5",     # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
]

"""What an administrator configures: the gateway's AE title and ports, who may send,
where instances are stored, limits, TLS and the topics it announces on."""

from __future__ import annotations

import dataclasses
import ipaddress

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024  # the job's own --max_file_bytes default
DEFAULT_MAX_PDU = 16382                     # pynetdicom's default, DICOM's usual value


class GatewayConfigError(ValueError):
    """Settings that cannot work; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Caller:
    """A sender allowed to associate: its calling AE title and, optionally, its addresses."""
    ae_title: str
    addresses: frozenset[str] = frozenset()

    def admits(self, address: str) -> bool:
        return not self.addresses or address in self.addresses


def parse_callers(text: str) -> dict[str, Caller]:
    """``CR_ROOM_3,PACS@10.0.0.5,PACS@10.0.0.6`` -> callers by AE title.

    ``AE@ADDRESS`` pins an AE title to the peer addresses it may come from.
    """
    callers: dict[str, set[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ae_title, _, address = item.partition("@")
        ae_title = ae_title.strip()
        if not ae_title or len(ae_title) > 16 or "\\" in ae_title:
            raise GatewayConfigError(
                f"{item!r} is not an AE title: 1 to 16 characters, no backslash "
                "(--allowed_callers AE[@ADDRESS],...)")
        addresses = callers.setdefault(ae_title, set())
        if address:
            try:
                addresses.add(str(ipaddress.ip_address(address.strip())))
            except ValueError:
                raise GatewayConfigError(f"{address!r} (for {ae_title}) is not an IP address"
                                         ) from None
    if not callers:
        raise GatewayConfigError("no sender is allowed: name the modalities' and PACS' AE "
                                 "titles with --allowed_callers AE[@ADDRESS],...")
    return {ae: Caller(ae, frozenset(addresses)) for ae, addresses in callers.items()}


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    certfile: str
    keyfile: str
    cafile: str | None = None  # when set, senders must present a certificate it signed


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    ae_title: str
    callers: dict[str, Caller]
    storage_root: str
    events_topic: str = "image-events"
    host: str = "127.0.0.1"
    port: int = 11112
    dicomweb_port: int | None = None
    max_pdu: int = DEFAULT_MAX_PDU
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    broker_timeout_s: float = 10.0
    tls: TlsSettings | None = None
    series_complete_s: float = 0.0
    notices_topic: str = "series-complete"
    priority: str = "routine"

    def __post_init__(self):
        if not self.ae_title or len(self.ae_title) > 16:
            raise GatewayConfigError("--ae_title must be 1 to 16 characters")
        if self.max_file_bytes <= 0:
            raise GatewayConfigError("--max_file_bytes must be positive")
        if self.max_pdu and self.max_pdu < 4096:
            raise GatewayConfigError("--max_pdu must be 0 (unlimited) or at least 4096 bytes")
        if self.broker_timeout_s <= 0:
            raise GatewayConfigError("--broker_timeout_s must be positive")

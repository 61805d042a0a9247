"""The PACS over DICOMweb (dicomweb-client): fetch a source instance (WADO-RS), check
what is stored (QIDO-RS) and store reports (STOW-RS), retrying with backoff.

Errors are ``PacsError`` with ``transient`` set when a retry may help (connection
refused, timeouts, 5xx, 429): the consumer loop keeps retrying those with backoff,
others become dead letters at once. Messages name UIDs and HTTP status only, never
what the PACS returned (it may quote patient identity).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

LOG = logging.getLogger(__name__)


class PacsError(RuntimeError):
    def __init__(self, message: str, *, transient: bool, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


def _classify(error: Exception, what: str) -> PacsError:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        return PacsError(f"{what}: HTTP {status}", transient=status >= 500 or status == 429,
                         status=status)
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return PacsError(f"{what}: PACS unreachable ({type(error).__name__})", transient=True)
    return PacsError(f"{what}: {type(error).__name__}", transient=False)


class Pacs:
    """One DICOMweb endpoint (e.g. Orthanc's ``http://host:8042/dicom-web``)."""

    def __init__(self, url: str, *, attempts: int = 5, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, timeout_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = url
        self._client = DICOMwebClient(url=url, timeout=timeout_s)
        # One retry policy, ours: dicomweb-client's own would multiply it.
        self._client.set_http_retry_params(retry=False)
        self._attempts, self._backoff_s, self._max_backoff_s = attempts, backoff_s, max_backoff_s
        self._sleep = sleep

    def _retrying(self, what: str, call):
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - classified below, nothing swallowed
                failure = _classify(error, what)
                if not failure.transient or attempt == self._attempts:
                    raise failure from None
                LOG.warning("PACS call failed, retrying", extra={
                    "what": what, "attempt": attempt, "retry_in_s": delay, "error": str(failure)})
                self._sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
        raise AssertionError("unreachable")

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """The stored instance (WADO-RS), pixel data included."""
        return self._retrying(f"retrieving instance {sop_uid}",
                              lambda: self._client.retrieve_instance(study_uid, series_uid, sop_uid))

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        found = self._retrying(f"searching instance {sop_uid}", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}))
        return bool(found)

    def instances(self, study_uid: str) -> list[dict]:
        """Every instance of a study (QIDO-RS), as DICOM JSON."""
        return self._retrying(f"searching study {study_uid}", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, get_remaining=True))

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS; storing an instance the PACS already holds is harmless (same UID)."""
        self._retrying("storing " + ", ".join(ds.SOPInstanceUID for ds in datasets),
                       lambda: self._client.store_instances(list(datasets)))

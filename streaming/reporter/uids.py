"""Every UID the reporter writes, derived from the finding it reports.

A replayed finding yields the same SR and heatmap instance UIDs, so the PACS keeps one
copy. ``2.25.<uuid>`` is the DICOM-sanctioned way to turn a UUID into a UID (PS3.5 B.2).
"""

from __future__ import annotations

import uuid

# Fixed forever: changing it would give every past finding new report UIDs.
_NAMESPACE = uuid.UUID("5b0e3f5e-7a59-4f43-9a3e-6a0c1d9b1f16")


def derived_uid(finding_id: str, purpose: str) -> str:
    """The UID of ``purpose`` ("sr", "sr-series", "heatmap", ...) for one finding."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, f'{finding_id}/{purpose}').int}"


def device_uid(model_name: str, model_version: str) -> str:
    """The device observer's UID: one per model version, whatever it reports."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, f'device/{model_name}/{model_version}').int}"

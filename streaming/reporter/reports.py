"""One finding in, its DICOM report and heatmap stored in the PACS: ``Reporter.report``.

Idempotent: the instances' UIDs derive from the finding id, and a finding whose report
is already in the PACS is not rebuilt, so a replay (a restarted reporter, a re-read
topic) stores nothing new. A finding that cannot be reported raises ``ReportRejected``
with a dead-letter reason; a transient PACS outage that outlasts the retries does too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

from pydicom.dataset import Dataset

from streaming.contracts.reasons import Reason
from streaming.modeling.loading import LoadedModel, load_model
from streaming.modeling.metadata import ModelMetadata
from streaming.modeling.registry import ModelRegistry
from streaming.reporter.pacs import Pacs, PacsError
from streaming.reporter.structured_report import build_report
from streaming.reporter.uids import derived_uid
from streaming.runtime import logs

LOG = logging.getLogger(__name__)


class ReportRejected(Exception):
    """A finding that did not become a report, with the dead-letter reason."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ReportOutcome:
    finding_id: str
    stored: tuple[str, ...]      # SOP instance UIDs stored now
    already_stored: bool = False
    skipped: str | None = None   # why nothing was written (e.g. not scored)


def report_uids(finding_id: str) -> dict[str, str]:
    """The SOP instance UIDs a finding's report and heatmap have, before they exist."""
    return {"sr": derived_uid(finding_id, "sr"), "heatmap": derived_uid(finding_id, "heatmap")}


class Reporter:
    """Writes a finding's SR (and, with ``heatmaps``, its Grad-CAM capture) into ``pacs``."""

    def __init__(self, pacs: Pacs, registry: ModelRegistry, *, heatmaps: bool = True):
        self.pacs, self.registry, self.heatmaps = pacs, registry, heatmaps
        self._models: dict[tuple[str, str], LoadedModel] = {}

    def report(self, finding: Mapping) -> ReportOutcome:
        finding_id = finding["finding_id"]
        if finding.get("status") != "scored":
            return ReportOutcome(finding_id, (), skipped="not scored")
        study = finding["study_instance_uid"]
        wanted = report_uids(finding_id)
        if not self.heatmaps:
            del wanted["heatmap"]
        try:
            missing = {kind: uid for kind, uid in wanted.items()
                       if not self.pacs.has_instance(study, uid)}
            if not missing:
                return ReportOutcome(finding_id, (), already_stored=True)
            source = self._source(finding)
            documents = self._documents(finding, source, missing)
            self.pacs.store(documents)
        except PacsError as error:
            reason = (Reason.REPORT_PACS_UNAVAILABLE if error.transient else Reason.REPORT_FAILED)
            raise ReportRejected(reason, f"finding {finding_id}: {error}") from None
        except (ReportRejected, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - the type only: a message may quote the source
            LOG.error("building a report failed", extra={
                "finding_id": finding_id, "error": type(error).__name__,
                "where": logs.where_it_failed(error)})
            raise ReportRejected(Reason.REPORT_FAILED, f"finding {finding_id}: building the report "
                                 f"failed ({type(error).__name__})") from None
        return ReportOutcome(finding_id, tuple(ds.SOPInstanceUID for ds in documents))

    def _source(self, finding: Mapping) -> Dataset:
        # Asked first: Orthanc answers WADO-RS for an instance missing from a series it
        # holds with an empty 200, not a 404.
        missing = not self.pacs.has_instance(finding["study_instance_uid"],
                                             finding["sop_instance_uid"])
        try:
            if missing:
                raise PacsError("not found", transient=False, status=404)
            return self.pacs.fetch_instance(finding["study_instance_uid"],
                                            finding["series_instance_uid"],
                                            finding["sop_instance_uid"])
        except PacsError as error:
            if error.status == 404:
                raise ReportRejected(
                    Reason.REPORT_SOURCE_UNAVAILABLE,
                    f"finding {finding['finding_id']}: the PACS does not hold SOP instance "
                    f"{finding['sop_instance_uid']}") from None
            raise

    def _metadata(self, finding: Mapping) -> ModelMetadata:
        model = finding["model"]
        try:
            return self.registry.metadata(model["name"], model["version"])
        except Exception as error:  # noqa: BLE001 - any registry failure: this finding cannot be coded
            raise ReportRejected(Reason.REPORT_FAILED,
                                 f"finding {finding['finding_id']}: model {model['name']}/"
                                 f"{model['version']} metadata unreadable ({type(error).__name__})"
                                 ) from None

    def _model(self, finding: Mapping) -> LoadedModel:
        key = (finding["model"]["name"], finding["model"]["version"])
        if key not in self._models:
            try:
                self._models[key] = load_model(self.registry, *key)
            except Exception as error:  # noqa: BLE001 - same: no heatmap without the model
                raise ReportRejected(Reason.REPORT_FAILED,
                                     f"finding {finding['finding_id']}: model {key[0]}/{key[1]} "
                                     f"cannot be loaded ({type(error).__name__})") from None
        return self._models[key]

    def _documents(self, finding: Mapping, source: Dataset, missing: dict) -> list[Dataset]:
        documents = []
        if "sr" in missing:
            documents.append(build_report(finding, source, self._metadata(finding)))
        if "heatmap" in missing:
            from streaming.reporter.heatmap import build_heatmap  # noqa: PLC0415 - TensorFlow
            documents.append(build_heatmap(finding, source, self._model(finding)))
        return documents

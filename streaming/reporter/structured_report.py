"""A finding as a DICOM Structured Report: TID 1500 (Measurement Report) built with highdicom.

One image-level measurement group (TID 1501) references the source image and holds
the coded finding and whether it is present, the score, the operating threshold,
whether it is urgent, and the algorithm (TID 4019: model name and version); the
observation context names the model as a device observer. Patient and study modules
are copied by highdicom from the source instance, fetched from the PACS: the finding
carries no patient identity.
"""

from __future__ import annotations

from typing import Mapping

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from streaming.modeling.metadata import LOCAL_CODING_SCHEME, ModelMetadata
from streaming.reporter.uids import derived_uid, device_uid

MANUFACTURER = "medimg"
SR_SERIES_NUMBER = 9901
# Concepts SNOMED CT and DCM have no code for: local codes, declared as such (99 prefix).
SCORE = hd.sr.CodedConcept("SCORE", LOCAL_CODING_SCHEME, "Model score")
THRESHOLD = hd.sr.CodedConcept("THRESHOLD", LOCAL_CODING_SCHEME, "Operating threshold")
URGENT = hd.sr.CodedConcept("URGENT", LOCAL_CODING_SCHEME, "Urgent")
FINDING_ID = "finding_id"
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
NO = hd.sr.CodedConcept("373067005", "SCT", "No")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def finding_concept(metadata: ModelMetadata) -> hd.sr.CodedConcept:
    code = metadata.class_code(metadata.positive_class)
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def build_report(finding: Mapping, source: Dataset, metadata: ModelMetadata) -> hd.sr.Comprehensive3DSR:
    """The SR for one scored ``finding`` about ``source`` (the instance from the PACS),
    read with ``metadata`` (the model version that scored it)."""
    finding_id = finding["finding_id"]
    model = finding["model"]
    concept = finding_concept(metadata)
    algorithm = hd.sr.AlgorithmIdentification(name=model["name"], version=model["version"])
    score = float(finding["scores"][metadata.positive_class])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(finding_id, "tracking"), identifier=f"{FINDING_ID} {finding_id}"),
        finding_type=concept,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(concept, PRESENT if finding["positive"] else ABSENT),
            hd.sr.QualitativeEvaluation(URGENT, YES if finding["urgent"] else NO),
        ],
        measurements=[
            hd.sr.Measurement(name=SCORE, value=score, unit=NO_UNITS, algorithm_id=algorithm),
            hd.sr.Measurement(name=THRESHOLD, value=float(finding["threshold"]), unit=NO_UNITS,
                              algorithm_id=algorithm),
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model["name"], model["version"]), name=f"{model['name']}/{model['version']}",
            manufacturer_name=MANUFACTURER, model_name=model["name"]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group])
    document = hd.sr.Comprehensive3DSR(
        evidence=[source], content=report[0],
        series_instance_uid=derived_uid(finding_id, "sr-series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(finding_id, "sr"), instance_number=1,
        # Not verified by a person: the report is the algorithm's, for a reader to confirm.
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    document.SeriesDescription = f"medimg {model['name']} {model['version']} (not verified)"
    return document

"""Model metadata's optional class codes and explained layer, and the reporter's derived UIDs."""

from __future__ import annotations

import pytest

from streaming.modeling.metadata import ClassCode, InvalidModelMetadata, ModelMetadata
from streaming.reporter.uids import derived_uid

BASE = {"schema_version": 1, "name": "chest", "version": "3", "classes": ["normal", "pneumonia"],
        "positive_class": "pneumonia", "threshold": 0.4, "urgent_threshold": 0.9,
        "preprocessing": {"height": 64, "width": 64, "channels": 1},
        "applicability": {"modalities": ["CR"]}, "created_at": "2026-01-01T00:00:00Z"}


def test_older_metadata_gets_default_codes_and_no_named_layer():
    metadata = ModelMetadata.from_dict(BASE)
    assert metadata.class_code("pneumonia") == ClassCode("233604007", "SCT", "Pneumonia")
    assert metadata.explained_layer is None


def test_named_codes_and_layer_win_and_unknown_classes_get_a_local_code():
    document = dict(BASE, classes=["normal", "opacity"], positive_class="opacity",
                    class_codes={"normal": {"value": "X1", "scheme": "99SITE", "meaning": "Clear"}},
                    explained_layer="block3b_relu")
    metadata = ModelMetadata.from_dict(document)
    assert metadata.class_code("normal") == ClassCode("X1", "99SITE", "Clear")
    assert metadata.class_code("opacity").scheme == "99MEDIMG"
    assert metadata.explained_layer == "block3b_relu"
    assert ModelMetadata.from_dict(metadata.to_dict()).explained_layer == "block3b_relu"


def test_a_class_code_without_a_scheme_breaks_the_contract():
    with pytest.raises(InvalidModelMetadata):
        ModelMetadata.from_dict(dict(BASE, class_codes={"pneumonia": {"value": "1", "meaning": "x"}}))


def test_report_uids_are_the_same_for_a_replay_and_differ_by_purpose():
    finding_id = "9b6c1f0e-3a55-5d1e-8f0a-6f6c2a9d4b11"
    assert derived_uid(finding_id, "sr") == derived_uid(finding_id, "sr")
    assert derived_uid(finding_id, "sr") != derived_uid(finding_id, "heatmap")
    assert len(derived_uid(finding_id, "sr")) <= 64

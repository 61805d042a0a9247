"""The job's steps as plain functions: each input yields exactly one output, tagged or not."""

from __future__ import annotations

import json
import logging

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.contracts import validation

from streaming.job import pipeline
from streaming.local import phantoms
from streaming.contracts.events import ReceivedEvent, parse_event
from streaming.imaging.types import DecodedImage
from streaming.tools.modality import event_for_file
from streaming.modeling.scoring import ImageToScore, Scoring
from streaming.job.options import job_settings
from streaming.contracts.records import KafkaRecord, OutboundRecord, SourcePosition


@pytest.fixture
def settings(tmp_path):
    options = PipelineOptions(["--model_registry", str(tmp_path / "registry"),
                               "--allowed_roots", str(tmp_path)])
    return job_settings(options)


@pytest.fixture
def received(tmp_path):
    (case,) = [c for c in phantoms.generate_study_set(tmp_path / "studies", 1, seed=2, size=64)]
    event = event_for_file(case.path, sender="UNIT")
    record = KafkaRecord(SourcePosition("image-events", 1, 77), event.study_instance_uid.encode(),
                         event.to_json(), 0, 1_790_000_000.0)
    return ReceivedEvent(event=parse_event(record.value), record=record)


def only(outputs):
    (output,) = list(outputs)
    return output


def dead_letter_of(output) -> dict:
    assert isinstance(output, beam.pvalue.TaggedOutput) and output.tag == pipeline.DEAD_LETTERS
    record: OutboundRecord = output.value
    assert record.kind == OutboundRecord.DEAD_LETTER
    document = json.loads(record.value)
    assert validation.errors(validation.DEAD_LETTER, document, strict=True) == []
    return document


def test_parse_turns_garbage_into_a_dead_letter_with_its_position(settings):
    record = KafkaRecord(SourcePosition("image-events", 2, 9), None, b"{oops", 0, 0.0)
    document = dead_letter_of(only(pipeline.ParseEvents(settings).process(record)))
    assert document["reason"] == "invalid_json" and document["stage"] == "parse"
    assert document["source"] == {"topic": "image-events", "partition": 2, "offset": 9}
    assert document["payload"]["data"] == "{oops"


def test_load_decodes_an_allowed_image_and_keeps_header_routing_facts(settings, received):
    item = only(pipeline.LoadImages(settings).process(received))
    assert isinstance(item, ImageToScore)
    assert item.context is received
    assert item.modality in ("CR", "DX") and item.body_part_examined == "CHEST"
    assert item.image.pixels.dtype == np.float32


def test_load_refuses_images_outside_the_allowed_roots(settings, received, tmp_path):
    elsewhere = received.event.__class__(**{**received.event.__dict__, "uri": "/etc/hostname"})
    document = dead_letter_of(only(pipeline.LoadImages(settings).process(
        ReceivedEvent(event=elsewhere, record=received.record))))
    assert document["reason"] == "uri_not_allowed" and document["stage"] == "load"
    assert document["event_id"] == received.event.event_id


def test_an_unexpected_loader_error_is_a_dead_letter_and_logs_no_values(
        settings, received, monkeypatch, caplog):
    def broken_loader(*_args, **_kwargs):  # a bug in a decoder plugin, quoting a header value
        raise RuntimeError("cannot parse PatientName 'CANARY^JANE'")

    monkeypatch.setattr(pipeline, "load_image", broken_loader)
    with caplog.at_level(logging.INFO):
        document = dead_letter_of(only(pipeline.LoadImages(settings).process(received)))
    assert document["reason"] == "undecodable_pixel_data"
    assert "RuntimeError" in document["message"]
    (logged,) = [r for r in caplog.records if r.name == "streaming.job.pipeline"]
    assert "CANARY" not in document["message"] and "CANARY" not in str(vars(logged))
    assert logged.error == "RuntimeError"
    assert any("broken_loader" in frame for frame in logged.where)  # where it failed


def scoring(status: str, **fields) -> Scoring:
    return Scoring(status, "test-cnn", "4", **fields)


def test_unusable_model_output_becomes_an_inference_failure(settings, received):
    result = PredictionResult(received, scoring(Scoring.FAILED, failure="NaN score"), "test-cnn/4")
    document = dead_letter_of(only(pipeline.BuildFindings(settings).process(result)))
    assert document["reason"] == "inference_failure"
    assert document["model"] == {"name": "test-cnn", "version": "4"}


def test_not_applicable_becomes_a_finding(settings, received):
    result = PredictionResult(received, scoring(Scoring.NOT_APPLICABLE, modality="CT",
                                                not_applicable_reason="modality CT"),
                              "test-cnn/4")
    record = only(pipeline.BuildFindings(settings).process(result))
    assert isinstance(record, OutboundRecord) and record.kind == OutboundRecord.FINDING
    assert record.key == received.event.study_instance_uid.encode()
    assert json.loads(record.value)["status"] == "not_applicable"


def test_a_failed_batch_dead_letters_every_event_in_it(settings, received):
    image = DecodedImage(np.zeros((4, 4), np.float32), "MONOCHROME2")
    batch = [ImageToScore(received, image, "CR", "CHEST") for _ in range(3)]
    failure = (batch, (MemoryError, "MemoryError()", ["traceback"]))
    letters = [json.loads(r.value) for r in pipeline.dead_letters_for_failed_batch(failure,
                                                                                    settings)]
    assert [d["reason"] for d in letters] == ["inference_failure"] * 3
    assert all("MemoryError" in d["message"] for d in letters)

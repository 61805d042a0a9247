"""The streaming diagnostic job: image events in, findings and dead letters out.

    ReadImageEvents -> ParseEvents -> LoadImages -> RunInference -> BuildFindings -> PublishFindings
                          |              |               |               |
                          +--------------+---------------+---------------+-> PublishDeadLetters

Every consumed event ends in exactly one finding or one dead letter. The hot path
is one fused chain with no GroupByKey, side input or Flatten: the local runner only
passes data across such a boundary when the upstream stage finishes, which an
unbounded source never does. That is also why each branch of dead letters has its
own publishing step instead of being flattened into one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from streaming.runtime import lifecycle, logs, metrics
from streaming.contracts.dead_letters import Rejection, Stage, dead_letter_record
from streaming.contracts.events import EventRejected, ReceivedEvent, parse_event
from streaming.job.findings import finding_record
from streaming.imaging.decoding import load_image
from streaming.imaging.types import ImageRejected
from streaming.kafka.admin import ensure_topics
from streaming.kafka.lease import GroupLease
from streaming.kafka.sink import WriteToKafka
from streaming.kafka.source import ReadFromKafka
from streaming.modeling.handler import KerasModelHandler
from streaming.modeling.registry import ModelRegistry
from streaming.modeling.scoring import ImageToScore, Scoring
from streaming.job.options import LOCAL_RUNNER, JobSettings, job_settings
from streaming.contracts.reasons import Reason
from streaming.contracts.records import KafkaRecord, OutboundRecord

LOG = logging.getLogger(__name__)
DEAD_LETTERS = "dead_letters"


class ParseEvents(beam.DoFn):
    """KafkaRecord -> ReceivedEvent, or a dead letter (invalid JSON, schema violation...)."""

    def __init__(self, settings: JobSettings):
        self._settings = settings

    def process(self, record: KafkaRecord) -> Iterable:
        metrics.count("events_consumed")
        try:
            event = parse_event(record.value, self._settings.max_event_bytes)
        except EventRejected as rejected:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter_record(
                Rejection(rejected.reason, rejected.message, Stage.PARSE),
                record.position, record.value, event_id=rejected.event_id,
                study_instance_uid=rejected.study_instance_uid,
                payload_limit=self._settings.dead_letter_payload_bytes))
            return
        yield ReceivedEvent(event=event, record=record)


class LoadImages(beam.DoFn):
    """ReceivedEvent -> ImageToScore (decoded pixels), or a dead letter saying why not."""

    def __init__(self, settings: JobSettings):
        self._settings = settings

    def setup(self):
        logs.silence_phi_sources()  # workers have their own logging set-up (e.g. Dataflow)

    def process(self, received: ReceivedEvent) -> Iterable:
        event = received.event
        try:
            image = load_image(event.uri, event.content_type, policy=self._settings.access,
                               limits=self._settings.limits, expected_sha256=event.sha256)
        except ImageRejected as rejected:
            yield self._dead_letter(received, Rejection(rejected.reason, rejected.message,
                                                        Stage.LOAD))
            return
        except Exception as error:  # noqa: BLE001 - a poison file must not stop the job
            LOG.error("unexpected error loading an image", extra={
                "event_id": event.event_id, "error": type(error).__name__,
                "where": logs.where_it_failed(error)})
            yield self._dead_letter(received, Rejection(
                Reason.UNDECODABLE_PIXEL_DATA,
                f"unexpected {type(error).__name__} while loading the image; "
                "the job's logs have the details", Stage.LOAD))
            return
        yield ImageToScore(context=received, image=image,
                           modality=image.modality or event.modality,
                           body_part_examined=image.body_part_examined or event.body_part_examined)

    def _dead_letter(self, received: ReceivedEvent, rejection: Rejection):
        metrics.count("decode_failures", Reason(rejection.reason).value)
        return beam.pvalue.TaggedOutput(DEAD_LETTERS,
                                        received_dead_letter(received, rejection, self._settings))


class BuildFindings(beam.DoFn):
    """PredictionResult -> a finding, or a dead letter when the model's output is unusable."""

    def __init__(self, settings: JobSettings):
        self._settings = settings

    def process(self, result: PredictionResult) -> Iterable:
        received: ReceivedEvent = result.example
        scoring: Scoring = result.inference
        if scoring.status == Scoring.FAILED:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, inference_dead_letter(
                received, scoring.failure, self._settings,
                model={"name": scoring.model_name, "version": scoring.model_version}))
            return
        yield finding_record(received.event, received.record, scoring)


def received_dead_letter(received: ReceivedEvent, rejection: Rejection, settings: JobSettings,
                         model: dict | None = None) -> OutboundRecord:
    """The dead letter of an event that parsed: it keeps the event's identity."""
    return dead_letter_record(
        rejection, received.record.position, received.record.value,
        event_id=received.event.event_id, study_instance_uid=received.event.study_instance_uid,
        model=model, payload_limit=settings.dead_letter_payload_bytes,
        sent_at_epoch=received.event.sent_at_epoch)


def inference_dead_letter(received: ReceivedEvent, message: str, settings: JobSettings,
                          model: dict | None = None) -> OutboundRecord:
    return received_dead_letter(
        received, Rejection(Reason.INFERENCE_FAILURE, message, Stage.INFERENCE), settings,
        model)


def dead_letters_for_failed_batch(failure, settings: JobSettings) -> Iterable[OutboundRecord]:
    """RunInference's failed batch (items, exception info) -> one dead letter per event."""
    batch, (error_type, _error_repr, _traceback) = failure
    LOG.error("inference failed for a batch", extra={"events": len(batch),
                                                     "error": error_type.__name__})
    message = f"the model raised {error_type.__name__} while scoring this event's batch"
    for item in batch:
        yield inference_dead_letter(item.context, message, settings)


class ScoreEvents(beam.PTransform):
    """ReceivedEvent -> findings, plus the dead letters of each step, as a dict.

    Keys: ``findings`` and ``dead_letters/<step>``. Shared by the streaming job and
    batch inference, so both score with exactly the same steps.
    """

    def __init__(self, settings: JobSettings, handler: KerasModelHandler):
        super().__init__()
        self._settings = settings
        self._handler = handler

    def expand(self, received):
        settings = self._settings
        images = received | "LoadImages" >> beam.ParDo(LoadImages(settings)).with_outputs(
            DEAD_LETTERS, main="images")
        predictions, failed = (images.images | "RunInference"
                               >> RunInference(self._handler).with_exception_handling())
        findings = predictions | "BuildFindings" >> beam.ParDo(
            BuildFindings(settings)).with_outputs(DEAD_LETTERS, main="findings")
        failed_batches = failed.failed_inferences | "DeadLetterFailedBatches" >> beam.FlatMap(
            dead_letters_for_failed_batch, settings)
        return {"findings": findings.findings, "dead_letters/Load": images[DEAD_LETTERS],
                "dead_letters/Findings": findings[DEAD_LETTERS],
                "dead_letters/FailedBatches": failed_batches}


def dead_letter_outputs(scored: dict) -> dict:
    """step -> dead-letter PCollection, from ScoreEvents' output."""
    return {key.split("/", 1)[1]: pcoll for key, pcoll in scored.items()
            if key.startswith("dead_letters/")}


def build_pipeline(pipeline: beam.Pipeline, settings: JobSettings) -> None:
    """Wire the job into ``pipeline``: named steps, top to bottom."""
    handler = KerasModelHandler(
        settings.model_registry, settings.model_name, settings.model_version,
        min_batch_size=settings.min_batch_size, max_batch_size=settings.max_batch_size,
        share_across_processes=settings.share_model_across_processes,
        poll_s=settings.model_poll_s)

    records = pipeline | "ReadImageEvents" >> ReadFromKafka(settings.reader)
    events = records | "ParseEvents" >> beam.ParDo(ParseEvents(settings)).with_outputs(
        DEAD_LETTERS, main="events")
    scored = events.events | "ScoreEvents" >> ScoreEvents(settings, handler)

    _ = scored["findings"] | "PublishFindings" >> WriteToKafka(settings.writer)
    # One publishing step per branch: a Flatten would split the fused hot path.
    branches = {"Parse": events[DEAD_LETTERS], **dead_letter_outputs(scored)}
    for step, dead_letters in branches.items():
        _ = dead_letters | f"PublishDeadLetters{step}" >> WriteToKafka(settings.writer)


def pipeline_options(argv: list[str] | None) -> PipelineOptions:
    """Options with the local runner pinned unless --runner is given; streaming always on."""
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    standard.streaming = True
    return options


def run(argv: list[str] | None = None) -> None:
    """Start the job and block until it is drained (SIGTERM) or fails."""
    options = pipeline_options(argv)
    settings = job_settings(options)
    # Fail here, with advice, rather than inside a worker: is there a model to serve?
    registry = ModelRegistry(settings.model_registry)
    registry.metadata(settings.model_name,
                      registry.resolve(settings.model_name, settings.model_version))
    if settings.create_topics:
        ensure_topics(settings.kafka, {topic: settings.topic_partitions for topic in (
            settings.events_topic, settings.findings_topic, settings.dead_letter_topic)},
            timeout_s=settings.startup_timeout_s)
    # One job per consumer group, before anything is read or settled: a second job
    # would publish an outcome for every event again (streaming/kafka/lease.py).
    lease = GroupLease(settings.kafka, settings.consumer_group, settings.lease_topic,
                       settings.lease_ttl_s, startup_timeout_s=settings.startup_timeout_s)
    try:
        token = lease.acquire()
        settings = dataclasses.replace(settings, lease_token=token)
        _run_holding_lease(options, settings)
    finally:
        lease.release()


def _run_holding_lease(options: PipelineOptions, settings: JobSettings) -> None:
    lifecycle.install_signal_handlers()
    if lifecycle.drain_requested():
        LOG.info("stop requested during start-up: nothing was read, nothing to drain")
        return
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    LOG.info("streaming job starting", extra={
        "runner": options.view_as(StandardOptions).runner, "events_topic": settings.events_topic,
        "findings_topic": settings.findings_topic, "model_name": settings.model_name,
        "consumer_group": settings.consumer_group, "lease_token": settings.lease_token})
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, settings)
    result = pipeline.run()
    result.wait_until_finish()
    LOG.info("streaming job stopped", extra={"state": str(result.state)})

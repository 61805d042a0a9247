"""Batch inference: score a folder of studies with the production model, offline.

The same steps as the streaming job (LoadImages, RunInference with the Keras
handler, BuildFindings), so a batch finding is exactly what the job would have
emitted, in the finding schema; only the source (a folder instead of a topic) and
the sink (JSON-lines files instead of topics) differ. The production version is
resolved once at launch and pinned, so one run never mixes model versions.

    <output_dir>/findings-00000-of-00001.jsonl
    <output_dir>/dead_letters-00000-of-00001.jsonl
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.contracts.events import ReceivedEvent
from streaming.contracts.events import new_event
from streaming.tools.modality import content_type_of, inventory, path_uids
from streaming.modeling.handler import KerasModelHandler
from streaming.modeling.registry import ModelRegistry
from streaming.job.options import LOCAL_RUNNER, JobSettings, job_settings
from streaming.job.pipeline import ScoreEvents, dead_letter_outputs
from streaming.contracts.records import KafkaRecord, OutboundRecord, SourcePosition

LOG = logging.getLogger(__name__)
SENDER = "MEDIMG_BATCH"


@dataclasses.dataclass(frozen=True)
class BatchInferenceResult:
    model: str
    events: int
    skipped_files: int  # not named like an image file
    findings_path: str
    dead_letters_path: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def received_events(studies: str, modality: str = "OT") -> tuple[list[ReceivedEvent], int]:
    """One event per image file under ``studies``; returns (events, files left out).

    A file named like an image whose header is unreadable still gets an event (UIDs
    from its path), so it ends as a dead letter saying why rather than vanishing.
    Files that are not named like images (.dcm, .png, .jpg) are left out and counted.
    """
    found = inventory([studies], sender=SENDER, modality=modality)
    events, left_out = list(found.events), 0
    for path in map(Path, found.skipped):
        content_type = content_type_of(path)
        if content_type is None:
            left_out += 1
            continue
        events.append(new_event(**path_uids(path.resolve()), modality=modality,
                                uri=str(path.resolve()), content_type=content_type,
                                sender=SENDER))
    source = f"batch:{Path(studies).resolve()}"
    now = time.time()
    received = [ReceivedEvent(event, KafkaRecord(SourcePosition(source, 0, offset),
                                                 event.study_instance_uid.encode(),
                                                 event.to_json(), int(now * 1000), now))
                for offset, event in enumerate(events)]
    return received, left_out


def record_json(record: OutboundRecord) -> str:
    return record.value.decode("utf-8")


def build_batch_pipeline(pipeline: beam.Pipeline, received: list[ReceivedEvent],
                         settings: JobSettings, output_dir: str) -> None:
    handler = KerasModelHandler(settings.model_registry, settings.model_name,
                                settings.model_version, min_batch_size=1,
                                max_batch_size=settings.max_batch_size)
    scored = (pipeline
              | "Studies" >> beam.Create(received)
              | "ScoreEvents" >> ScoreEvents(settings, handler))
    _ = (scored["findings"]
         | "FindingsAsJson" >> beam.Map(record_json)
         | "WriteFindings" >> beam.io.WriteToText(f"{output_dir}/findings",
                                                  file_name_suffix=".jsonl", num_shards=1))
    _ = (tuple(dead_letter_outputs(scored).values())
         | "AllDeadLetters" >> beam.Flatten()
         | "DeadLettersAsJson" >> beam.Map(record_json)
         | "WriteDeadLetters" >> beam.io.WriteToText(f"{output_dir}/dead_letters",
                                                     file_name_suffix=".jsonl", num_shards=1))


def run_batch_inference(studies: str, model_registry: str, model_name: str, output_dir: str,
                        *, modality: str = "OT", max_batch_size: int = 32,
                        runner: str = LOCAL_RUNNER) -> BatchInferenceResult:
    """Score every image under ``studies`` with the production model; write JSON lines."""
    registry = ModelRegistry(model_registry)
    version = registry.resolve(model_name)
    settings = job_settings(PipelineOptions([
        "--model_registry", model_registry, "--model_name", model_name,
        "--model_version", version, "--allowed_roots", str(Path(studies).resolve()),
        "--max_batch_size", str(max_batch_size)]))
    received, skipped = received_events(studies, modality)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    LOG.info("batch inference", extra={"model": f"{model_name}/{version}",
                                       "events": len(received), "skipped_files": skipped})
    with beam.Pipeline(options=PipelineOptions(["--runner", runner])) as pipeline:
        build_batch_pipeline(pipeline, received, settings, output_dir)
    return BatchInferenceResult(
        model=f"{model_name}/{version}", events=len(received), skipped_files=skipped,
        findings_path=f"{output_dir}/findings-00000-of-00001.jsonl",
        dead_letters_path=f"{output_dir}/dead_letters-00000-of-00001.jsonl")

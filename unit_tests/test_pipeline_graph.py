"""The job's graph: portable Beam primitives only, one fused hot path, named steps."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability import common_urns

from streaming.job.options import LOCAL_RUNNER, job_settings
from streaming.job.pipeline import build_pipeline, pipeline_options

PORTABLE = {
    common_urns.primitives.IMPULSE.urn,
    common_urns.primitives.PAR_DO.urn,
    # RunInference's batching is plain DoFns; nothing else should appear.
}


def graph(tmp_path):
    options = PipelineOptions(["--model_registry", str(tmp_path), "--allowed_roots", str(tmp_path),
                               "--bootstrap_servers", "broker:9092"])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job_settings(options))
    return pipeline.to_runner_api()


def leaf_transforms(proto):
    return {tid: t for tid, t in proto.components.transforms.items() if not t.subtransforms}


def test_only_standard_portable_transforms(tmp_path):
    proto = graph(tmp_path)
    urns = {t.spec.urn for t in leaf_transforms(proto).values()}
    assert urns <= PORTABLE, f"non-portable transforms: {urns - PORTABLE}"
    # No cross-language (Java) transform, so no expansion service to download.
    environments = {env.urn for env in proto.components.environments.values()}
    assert all("java" not in urn and "external" not in urn for urn in environments)


def test_hot_path_has_no_stage_boundary(tmp_path):
    """GroupByKey, Flatten and side inputs would stop data on the local runner."""
    proto = graph(tmp_path)
    urns = {t.spec.urn for t in proto.components.transforms.values()}
    assert common_urns.primitives.GROUP_BY_KEY.urn not in urns
    assert common_urns.primitives.FLATTEN.urn not in urns
    for transform in leaf_transforms(proto).values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = transform.spec.payload
            from apache_beam.portability.api import beam_runner_api_pb2  # noqa: PLC0415
            pardo = beam_runner_api_pb2.ParDoPayload.FromString(payload)
            assert not pardo.side_inputs, transform.unique_name
            assert not pardo.state_specs and not pardo.timer_family_specs


def test_steps_read_top_to_bottom(tmp_path):
    names = {t.unique_name for t in graph(tmp_path).components.transforms.values()}
    for step in ("ReadImageEvents", "ParseEvents", "ScoreEvents", "ScoreEvents/LoadImages",
                 "ScoreEvents/RunInference", "ScoreEvents/BuildFindings", "PublishFindings",
                 "PublishDeadLettersParse", "PublishDeadLettersLoad",
                 "PublishDeadLettersFindings", "PublishDeadLettersFailedBatches"):
        assert step in names


def test_the_local_runner_is_pinned_and_streaming_is_on():
    options = pipeline_options(["--model_registry", "r"])
    assert options.view_as(StandardOptions).runner == LOCAL_RUNNER
    assert options.view_as(StandardOptions).streaming
    chosen = pipeline_options(["--runner", "DataflowRunner", "--model_registry", "r"])
    assert chosen.view_as(StandardOptions).runner == "DataflowRunner"

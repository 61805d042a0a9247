"""The Dataflow job, translated offline: DataflowRunner with --dry_run builds the job
it would submit (the same code path as a real launch, minus staging and the API call).

The options come from deploy/dataflow/launch.sh itself (MEDIMG_PRINT_ARGS=1), so a
change to the script is what gets checked. Only Kafka exists as a transport today.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from unittest import mock

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient
from google.protobuf import json_format

from streaming.job.options import StreamingOptions, job_settings
from streaming.runtime.secrets import parse_secret_manager_refs
from streaming.job.pipeline import build_pipeline, pipeline_options

DEPLOY = pathlib.Path(__file__).resolve().parents[1] / "deploy" / "dataflow"
IMAGE = "europe-docker.pkg.dev/hospital-ml/medimg/stream-gpu:1.2.3"
ACCELERATOR = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
STEPS = ("ReadImageEvents", "ParseEvents", "ScoreEvents/LoadImages", "ScoreEvents/RunInference",
         "ScoreEvents/BuildFindings", "PublishFindings", "PublishDeadLettersParse",
         "PublishDeadLettersLoad", "PublishDeadLettersFindings",
         "PublishDeadLettersFailedBatches")
# What the test adds: build the job, do not submit it, no credentials, a gs:// bucket
# that need not exist (nothing is staged in a dry run).
DRY_RUN = ["--dry_run=True", "--no_auth"]
TRANSPORTS = {"kafka": {"BOOTSTRAP_SERVERS": "kafka-1.hospital.local:9093"}}


def launch_args(**env) -> list[str]:
    environ = {"PATH": "/usr/bin:/bin", "MEDIMG_PRINT_ARGS": "1", "PROJECT": "hospital-ml",
               "REGION": "europe-west4", "BUCKET": "gs://medimg-test-bucket", "IMAGE": IMAGE,
               **env}
    printed = subprocess.run(["bash", str(DEPLOY / "launch.sh")], env=environ, check=True,
                             capture_output=True, text=True).stdout
    return printed.splitlines()


def dry_run(argv: list[str]):
    """(job, environment) as DataflowRunner would submit them."""
    options = pipeline_options([*argv, *DRY_RUN])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job_settings(options))
    job = pipeline.run().job
    # The worker environment is built at submission, after staging; build it the same
    # way from the translated job (nothing is uploaded).
    environment = apiclient.Environment(
        packages=[], options=job.options, environment_version="8",
        proto_pipeline_staged_url="gs://medimg-test-bucket/staging/pipeline.pb",
        proto_pipeline=job.proto_pipeline).proto
    return job, environment


@pytest.fixture(scope="module", params=sorted(TRANSPORTS))
def launched(request):
    return dry_run(launch_args(**TRANSPORTS[request.param]))


def test_the_job_is_streaming_on_runner_v2_with_streaming_engine(launched):
    job, environment = launched
    assert job.proto.type_ == apiclient.dataflow.JobType.JOB_TYPE_STREAMING
    assert job.proto.name == "medimg-medimg-stream"  # fixed per group: Dataflow refuses a twin
    assert {"use_runner_v2", "enable_streaming_engine"} <= set(environment.experiments)
    assert "disable_runner_v2" not in environment.experiments


def test_workers_get_one_gpu_and_the_jax_image(launched):
    job, environment = launched
    assert list(environment.service_options) == [ACCELERATOR]
    images = {beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
              for env in job.proto_pipeline.components.environments.values()
              if env.urn == common_urns.environments.DOCKER.urn}
    assert images == {IMAGE}
    options = environment.sdk_pipeline_options["options"]
    assert options["sdk_container_image"] == IMAGE
    assert options["machine_type"].startswith("g2-")  # L4s attach to G2 machines only


def test_no_secret_reaches_the_job_description(monkeypatch):
    """Secrets in the launcher's environment stay there: not in the options Dataflow
    shows, nor pickled into the graph the workers receive."""
    canary = "canary-Pa55word-7f3e"
    for variable in ("MEDIMG_KAFKA_SASL_USERNAME", "MEDIMG_KAFKA_SASL_PASSWORD",
                     "MEDIMG_REDIS_USERNAME", "MEDIMG_REDIS_PASSWORD"):
        monkeypatch.setenv(variable, canary)
    job, environment = dry_run([*launch_args(**TRANSPORTS["kafka"]),
                                "--redis_url=rediss://redis.hospital.local:6380/0"])
    described = json_format.MessageToJson(environment._pb) + str(job)  # noqa: SLF001
    assert "redis.hospital.local" in described  # the check sees the options
    # Workers get the Secret Manager versions' names instead.
    assert ("MEDIMG_KAFKA_SASL_PASSWORD=projects/hospital-ml/secrets/medimg-kafka-sasl-password"
            "/versions/latest") in described
    assert canary not in described
    assert canary.encode() not in job.proto_pipeline.SerializeToString()


def test_workers_resolve_kafka_credentials_from_secret_manager(launched):
    """The reader's Kafka settings, as pickled for the workers, name the secrets; the
    values are fetched there (the Secret Manager client is the edge replaced here)."""
    job, _ = launched
    from streaming.kafka.config import KafkaConfig  # noqa: PLC0415
    refs = dict(job.options.view_as(PipelineOptions).get_all_options().items())
    config = KafkaConfig(bootstrap_servers="k:9093", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512",
                         secret_manager=parse_secret_manager_refs(refs["secret_manager_secrets"]))
    fetched = []

    def access(name):
        fetched.append(name)
        return "from-secret-manager"
    with mock.patch("streaming.runtime.secrets.access_secret_version", access):
        kwargs = config.client_kwargs(environ={})
    assert kwargs["sasl_plain_password"] == "from-secret-manager"
    assert sorted(fetched) == [
        "projects/hospital-ml/secrets/medimg-kafka-sasl-password/versions/latest",
        "projects/hospital-ml/secrets/medimg-kafka-sasl-username/versions/latest"]


def test_the_transforms_keep_their_names(launched):
    job, _ = launched
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    missing = [step for step in STEPS if step not in names]
    assert not missing, f"steps renamed or lost: {missing} (a --update would not map them)"


def test_no_group_by_key_or_flatten_on_the_hot_path(launched):
    job, _ = launched
    urns = {t.spec.urn for t in job.proto_pipeline.components.transforms.values()}
    assert common_urns.primitives.GROUP_BY_KEY.urn not in urns
    assert common_urns.primitives.FLATTEN.urn not in urns
    assert common_urns.composites.RESHUFFLE.urn not in urns


def test_a_launch_without_the_gpu_is_caught():
    """The checks above can fail: a CPU launch has no accelerator option."""
    argv = [a for a in launch_args(**TRANSPORTS["kafka"]) if "worker_accelerator" not in a]
    _, environment = dry_run(argv)
    assert ACCELERATOR not in environment.service_options


# --- Flex Template metadata -------------------------------------------------------

METADATA = json.loads((DEPLOY / "flex_template_metadata.json").read_text())
PARAM_TYPES = {"TEXT", "NUMBER", "GCS_READ_FOLDER", "GCS_READ_FILE", "BOOLEAN"}


def parameter(name):
    return next(p for p in METADATA["parameters"] if p["name"] == name)


def test_the_flex_template_is_a_streaming_template_with_typed_parameters():
    assert METADATA["name"] and METADATA["description"] and METADATA["streaming"] is True
    for param in METADATA["parameters"]:
        assert {"name", "label", "helpText", "isOptional", "paramType"} <= set(param), param
        assert param["paramType"] in PARAM_TYPES, param
        for regex in param.get("regexes", []):
            re.compile(regex)


def test_every_parameter_is_an_option_of_the_job():
    known = set(PipelineOptions([]).get_all_options(retain_unknown_options=False))
    declared = {p["name"] for p in METADATA["parameters"]}
    assert declared <= known, f"not job options: {declared - known}"
    own = {action.dest for action in _parser_actions(StreamingOptions)}
    assert {"model_registry", "allowed_roots"} <= own


def _parser_actions(options_class):
    import argparse  # noqa: PLC0415
    parser = argparse.ArgumentParser()
    options_class._add_argparse_args(parser)  # noqa: SLF001
    return parser._actions  # noqa: SLF001


def test_what_the_job_requires_is_required_and_no_secret_is_a_parameter():
    required = {p["name"] for p in METADATA["parameters"] if not p["isOptional"]}
    assert required == {"bootstrap_servers", "model_registry", "allowed_roots"}
    for param in METADATA["parameters"]:
        # Names of Secret Manager versions are fine; a value never is.
        assert not re.search(r"password|username|token", param["name"]), param


@pytest.mark.parametrize("name,good,bad", [
    ("redis_url", "rediss://redis.hospital.local:6380/0", "redis://medimg:hunter2@redis:6379"),
    ("allowed_roots", "gs://a/studies/,gs://b/x", "/mnt/pacs-export"),
    ("bootstrap_servers", "k1:9093,k2:9093", "k1"),
    ("kafka_security_protocol", "SASL_SSL", "sasl_ssl"),
    ("secret_manager_secrets",
     "MEDIMG_KAFKA_SASL_PASSWORD=projects/p/secrets/kafka/versions/latest",
     "MEDIMG_KAFKA_SASL_PASSWORD=hunter2"),
])
def test_parameter_regexes_accept_good_values_and_refuse_bad(name, good, bad):
    regexes = [re.compile(r) for r in parameter(name)["regexes"]]
    assert all(r.fullmatch(good) for r in regexes)
    assert not all(r.fullmatch(bad) for r in regexes)


def test_the_template_parameters_translate_into_the_same_job():
    """A Flex Template launch passes parameters as --name=value; the graph is the same."""
    examples = {"bootstrap_servers": "kafka-1.hospital.local:9093",
                "model_registry": "gs://medimg-test-bucket/models",
                "allowed_roots": "gs://medimg-test-bucket/studies/", "max_batch_size": "256",
                "redis_url": "rediss://redis.hospital.local:6380/0"}
    base = [a for a in launch_args(**TRANSPORTS["kafka"])
            if a.split("=", 1)[0].lstrip("-") not in examples]
    job, _ = dry_run([*base, *(f"--{k}={v}" for k, v in examples.items())])
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert set(STEPS) <= names

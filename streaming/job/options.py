"""Pipeline options of the streaming job, and the typed settings built from them.

Every option here is a Beam pipeline option, so the same flags work for
``medimg stream``, ``python -m streaming`` and a Dataflow or Flink launch.
Secrets are not options: see streaming/kafka/config.py.
"""

from __future__ import annotations

import dataclasses

from apache_beam.options.pipeline_options import (DirectOptions, KafkaStreamsRunnerOptions,
                                                  PipelineOptions, StandardOptions)

from streaming.contracts.dead_letters import DEFAULT_PAYLOAD_BYTES
from streaming.delivery.dedup import DEFAULT_TAKEOVER_S, DEFAULT_TTL_S, RedisSettings
from streaming.contracts.events import DEFAULT_MAX_EVENT_BYTES
from streaming.imaging.access import AccessPolicy
from streaming.imaging.types import ImageLimits
from streaming.kafka.config import KafkaConfig
from streaming.kafka.lease import DEFAULT_TOPIC as DEFAULT_LEASE_TOPIC
from streaming.kafka.lease import DEFAULT_TTL_S as DEFAULT_LEASE_TTL_S
from streaming.runtime import metrics
from streaming.runtime.secrets import parse_secret_manager_refs
from streaming.kafka.sink import WriterSettings
from streaming.kafka.source import ReaderSettings
from streaming.modeling.serving import DEFAULT_POLL_S

# The local runner, named explicitly: Beam's DirectRunner would first try to
# download the Prism runner from GitHub, which fails offline and would make local
# runs behave differently on machines that can reach GitHub.
LOCAL_RUNNER = "FnApiRunner"

DEFAULT_MODEL_NAME = "pneumonia-cnn"


class StreamingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        # --bootstrap_servers is Beam's own option (KafkaStreamsRunnerOptions, same meaning:
        # the brokers the pipeline connects to); defining it again would clash.
        kafka = parser.add_argument_group("Kafka")
        kafka.add_argument("--events_topic", default="image-events",
                           help="topic the modalities publish image events to")
        kafka.add_argument("--findings_topic", default="findings",
                           help="topic findings are published to")
        kafka.add_argument("--dead_letter_topic", default="dead-letters",
                           help="topic dead letters are published to")
        kafka.add_argument("--consumer_group", default="medimg-stream",
                           help="consumer group whose committed offsets mark progress; "
                                "a new group starts from the earliest event")
        kafka.add_argument("--topic_partitions", type=int, default=3,
                           help="partitions for topics the job creates (default: %(default)s)")
        kafka.add_argument("--create_topics", default="true", choices=("true", "false"),
                           help="create missing topics at start (default: %(default)s)")
        kafka.add_argument("--startup_timeout_s", type=float, default=60.0,
                           help="how long to wait for the brokers at start (default: %(default)s)")
        kafka.add_argument("--poll_timeout_ms", type=int, default=300,
                           help="how long an idle reader waits for new events per round "
                                "over its partitions (default: %(default)s)")
        kafka.add_argument("--max_records_per_bundle", type=int, default=256,
                           help="records a partition reader hands over per bundle")
        kafka.add_argument("--new_partitions", type=int, default=8,
                           help="partitions the events topic may gain while the job runs, "
                                "read without a restart; more need a restart "
                                "(default: %(default)s)")
        kafka.add_argument("--partition_discovery_s", type=float, default=10.0,
                           help="how often the job looks for new partitions of the events "
                                "topic (default: %(default)s)")
        kafka.add_argument("--lease_topic", default=DEFAULT_LEASE_TOPIC,
                           help="topic holding each consumer group's lease: one job per "
                                "group; a second job refuses to start (default: %(default)s)")
        kafka.add_argument("--lease_ttl_s", type=float, default=DEFAULT_LEASE_TTL_S,
                           help="a job that stopped heartbeating (killed) gives its consumer "
                                "group up after this long; a restart waits at most this long "
                                "(default: %(default)s)")
        kafka.add_argument("--kafka_security_protocol", default="PLAINTEXT",
                           help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        kafka.add_argument("--kafka_sasl_mechanism", default=None,
                           help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER; "
                                "credentials come from MEDIMG_KAFKA_SASL_USERNAME/"
                                "MEDIMG_KAFKA_SASL_PASSWORD (or their _FILE variants)")
        kafka.add_argument("--kafka_ssl_cafile", default=None, help="CA bundle for TLS")
        kafka.add_argument("--kafka_ssl_certfile", default=None, help="client certificate (mTLS)")
        kafka.add_argument("--kafka_ssl_keyfile", default=None,
                           help="client key (mTLS); its password comes from "
                                "MEDIMG_KAFKA_SSL_KEY_PASSWORD(_FILE)")

        model = parser.add_argument_group("Model")
        model.add_argument("--model_registry", default=None,
                           help="model registry folder or URI (gs://...) written by medimg train")
        model.add_argument("--model_name", default=DEFAULT_MODEL_NAME,
                           help="model to serve (default: %(default)s)")
        model.add_argument("--model_version", default=None,
                           help="pin a version instead of following the production pointer")
        model.add_argument("--model_poll_s", type=float, default=DEFAULT_POLL_S,
                           help="how often the job checks the registry's production pointer "
                                "for a newly promoted version to swap to (default: %(default)s)")
        model.add_argument("--min_batch_size", type=int, default=None,
                           help="smallest inference batch (default: --max_batch_size). Batches "
                                "never wait across bundles: a bundle's last batch may be "
                                "smaller; a lower minimum lets Beam adapt the size to timing")
        model.add_argument("--max_batch_size", type=int, default=32,
                           help="largest inference batch (default: %(default)s)")
        model.add_argument("--share_model_across_processes", action="store_true",
                           help="load one model per machine, shared by its worker processes")

        delivery = parser.add_argument_group("Effectively-once delivery")
        delivery.add_argument("--redis_url", default=None,
                              help="redis:// or rediss:// URL of the duplicate-suppression "
                                   "store (no credentials: MEDIMG_REDIS_USERNAME/"
                                   "MEDIMG_REDIS_PASSWORD or their _FILE variants); without "
                                   "it delivery is at least once")
        delivery.add_argument("--redis_ssl_cafile", default=None, help="CA bundle for rediss://")
        delivery.add_argument("--dedup_ttl_s", type=int, default=DEFAULT_TTL_S,
                              help="how long an event is remembered; keep it longer than the "
                                   "events topic's retention (default: %(default)s, 8 days, "
                                   "for Kafka's default 7)")
        delivery.add_argument("--dedup_namespace", default=None,
                              help="key prefix in Redis (default: the consumer group)")
        delivery.add_argument("--dedup_takeover_s", type=float, default=DEFAULT_TAKEOVER_S,
                              help="take over another worker's unfinished claim after this "
                                   "long (default: %(default)s)")

        delivery.add_argument("--secret_manager_secrets", default=None,
                              help="where workers without our environment (Dataflow) read "
                                   "secrets: comma-separated VARIABLE=projects/P/secrets/S/"
                                   "versions/V, e.g. MEDIMG_KAFKA_SASL_PASSWORD=projects/p/"
                                   "secrets/kafka-password/versions/latest; the variable or "
                                   "its _FILE still wins where set")

        operations = parser.add_argument_group("Operations")
        operations.add_argument("--metrics_port", type=int, default=None,
                                help="serve Prometheus metrics on this port (local runner; "
                                     "on Dataflow the same counters are Beam metrics)")
        operations.add_argument("--metrics_host", default=metrics.DEFAULT_HOST,
                                help="address the metrics endpoint binds to (default: "
                                     "%(default)s, loopback; 0.0.0.0 for a scraper elsewhere)")

        images = parser.add_argument_group("Images")
        images.add_argument("--allowed_roots", default=None,
                            help="comma-separated folders or URI prefixes images may be read "
                                 "from (required: no folder is readable by default)")
        images.add_argument("--refuse_hard_links", action="store_true",
                            help="refuse image files with more than one hard link (off by "
                                 "default: PACS exports use hard links legitimately)")
        images.add_argument("--max_event_bytes", type=int, default=DEFAULT_MAX_EVENT_BYTES,
                            help="larger events are dead-lettered (default: %(default)s)")
        images.add_argument("--max_file_bytes", type=int, default=ImageLimits.max_file_bytes,
                            help="larger image files are dead-lettered (default: %(default)s)")
        images.add_argument("--max_frame_pixels", type=int, default=ImageLimits.max_frame_pixels,
                            help="rows x columns limit per frame (default: %(default)s)")
        images.add_argument("--max_frames", type=int, default=ImageLimits.max_frames,
                            help="frames limit per instance (default: %(default)s)")
        images.add_argument("--dead_letter_payload_bytes", type=int,
                            default=DEFAULT_PAYLOAD_BYTES,
                            help="how much of a bad event a dead letter keeps "
                                 "(default: %(default)s)")


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """Everything the graph needs, checked and typed, independent of argparse."""
    kafka: KafkaConfig
    events_topic: str
    findings_topic: str
    dead_letter_topic: str
    consumer_group: str
    topic_partitions: int
    create_topics: bool
    startup_timeout_s: float
    poll_timeout_ms: int
    max_records_per_bundle: int
    model_registry: str
    model_name: str
    model_version: str | None
    model_poll_s: float
    min_batch_size: int
    max_batch_size: int
    share_model_across_processes: bool
    access: AccessPolicy
    limits: ImageLimits
    max_event_bytes: int
    dead_letter_payload_bytes: int
    metrics_port: int | None = None
    metrics_host: str = metrics.DEFAULT_HOST
    dedup: RedisSettings | None = None
    lease_topic: str = DEFAULT_LEASE_TOPIC
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    lease_token: int | None = None  # set once the job holds the group's lease
    new_partitions: int = 8
    partition_discovery_s: float = 10.0

    @property
    def reader(self) -> ReaderSettings:
        return ReaderSettings(config=self.kafka, topic=self.events_topic,
                              group_id=self.consumer_group,
                              poll_timeout_ms=self.poll_timeout_ms,
                              max_records_per_bundle=self.max_records_per_bundle,
                              lease_token=self.lease_token,
                              new_partitions=self.new_partitions,
                              discovery_interval_s=self.partition_discovery_s)

    @property
    def writer(self) -> WriterSettings:
        return WriterSettings(config=self.kafka, group_id=self.consumer_group,
                              findings_topic=self.findings_topic,
                              dead_letter_topic=self.dead_letter_topic,
                              dead_letter_payload_bytes=self.dead_letter_payload_bytes,
                              dedup=self.dedup)


class OptionsError(ValueError):
    """Options that cannot work; the message says what to pass instead."""


def allowed_roots(value: str | None) -> tuple[str, ...]:
    roots = tuple(root.strip() for root in (value or "").split(",") if root.strip())
    if not roots:
        # No implicit default: the temporary folder is writable by every local user, and
        # the working directory is wherever the job happened to start.
        raise OptionsError("--allowed_roots is required: the folders (or gs:// prefixes) "
                           "image events may point into, e.g. --allowed_roots "
                           "/mnt/pacs-export,gs://bucket/studies/")
    return roots


def bootstrap_servers(options: PipelineOptions) -> str:
    return options.view_as(KafkaStreamsRunnerOptions).bootstrap_servers


def check_local_workers(options: PipelineOptions) -> None:
    """The local runner with more than one worker loses each partition's remainder.

    FnApiRunner's bundle manager with --direct_num_workers > 1 (multi_processing and
    multi_threading alike, Beam 2.77) drops the residual that a reader defers: every
    partition would be read for one bundle, then never again, while the job looks alive.
    unit_tests/test_pipeline_graph.py records this, so a Beam that fixes it is noticed.
    """
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    workers = options.view_as(DirectOptions).direct_num_workers
    if runner in (LOCAL_RUNNER, "DirectRunner") and workers != 1:
        raise OptionsError(
            f"--direct_num_workers {workers} cannot run the Kafka readers: Beam's local "
            "runner drops the remainder a reader defers with more than one worker, so "
            "each partition would stop after one bundle. Run one local worker (the "
            "default); to use more cores, run on Dataflow or Flink, or split the events "
            "topic between jobs with separate --consumer_group and --events_topic")


def job_settings(options: PipelineOptions) -> JobSettings:
    check_local_workers(options)
    o = options.view_as(StreamingOptions)
    if not o.model_registry:
        raise OptionsError("--model_registry is required: the folder (or gs:// URI) that "
                           "`medimg train --model_registry DIR` wrote the model to")
    min_batch_size = o.max_batch_size if o.min_batch_size is None else o.min_batch_size
    if o.model_poll_s <= 0:
        raise OptionsError(f"--model_poll_s must be positive, got {o.model_poll_s}")
    for name in ("max_batch_size", "topic_partitions", "max_event_bytes",
                 "max_file_bytes", "max_frame_pixels", "max_frames", "poll_timeout_ms",
                 "max_records_per_bundle"):
        if getattr(o, name) < 1:
            raise OptionsError(f"--{name} must be at least 1, got {getattr(o, name)}")
    if o.new_partitions < 0:
        raise OptionsError(f"--new_partitions must be 0 or more, got {o.new_partitions}")
    if o.partition_discovery_s <= 0:
        raise OptionsError(f"--partition_discovery_s must be positive, got "
                           f"{o.partition_discovery_s}")
    if o.lease_ttl_s <= 0:
        raise OptionsError(f"--lease_ttl_s must be positive, got {o.lease_ttl_s}")
    if min_batch_size < 1:
        raise OptionsError(f"--min_batch_size must be at least 1, got {min_batch_size}")
    if min_batch_size > o.max_batch_size:
        raise OptionsError(f"--min_batch_size ({min_batch_size}) is larger than "
                           f"--max_batch_size ({o.max_batch_size})")
    topics = [o.events_topic, o.findings_topic, o.dead_letter_topic]
    if len(set(topics)) != 3:
        raise OptionsError("--events_topic, --findings_topic and --dead_letter_topic must differ")
    try:
        secret_manager = parse_secret_manager_refs(o.secret_manager_secrets)
        dedup = (RedisSettings(url=o.redis_url, namespace=o.dedup_namespace or o.consumer_group,
                               ttl_s=o.dedup_ttl_s, takeover_after_s=o.dedup_takeover_s,
                               ssl_cafile=o.redis_ssl_cafile, secret_manager=secret_manager)
                 if o.redis_url else None)
        kafka = KafkaConfig(bootstrap_servers=bootstrap_servers(options),
                            security_protocol=o.kafka_security_protocol,
                            sasl_mechanism=o.kafka_sasl_mechanism,
                            ssl_cafile=o.kafka_ssl_cafile, ssl_certfile=o.kafka_ssl_certfile,
                            ssl_keyfile=o.kafka_ssl_keyfile, client_id="medimg-stream",
                            secret_manager=secret_manager)
    except ValueError as error:
        raise OptionsError(str(error)) from error
    return JobSettings(
        kafka=kafka, events_topic=o.events_topic, findings_topic=o.findings_topic,
        dead_letter_topic=o.dead_letter_topic, consumer_group=o.consumer_group,
        topic_partitions=o.topic_partitions, create_topics=o.create_topics == "true",
        startup_timeout_s=o.startup_timeout_s,
        poll_timeout_ms=o.poll_timeout_ms, max_records_per_bundle=o.max_records_per_bundle,
        model_registry=o.model_registry, model_name=o.model_name,
        model_version=o.model_version, model_poll_s=o.model_poll_s,
        min_batch_size=min_batch_size,
        max_batch_size=o.max_batch_size,
        share_model_across_processes=o.share_model_across_processes,
        access=AccessPolicy(allowed_roots=allowed_roots(o.allowed_roots),
                            refuse_hard_links=o.refuse_hard_links),
        limits=ImageLimits(max_file_bytes=o.max_file_bytes, max_frame_pixels=o.max_frame_pixels,
                           max_frames=o.max_frames),
        max_event_bytes=o.max_event_bytes, dead_letter_payload_bytes=o.dead_letter_payload_bytes,
        metrics_port=o.metrics_port, metrics_host=o.metrics_host, dedup=dedup,
        lease_topic=o.lease_topic, lease_ttl_s=o.lease_ttl_s,
        new_partitions=o.new_partitions, partition_discovery_s=o.partition_discovery_s)

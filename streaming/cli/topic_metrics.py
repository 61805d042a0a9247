"""``medimg topic-metrics``: the topics' offsets for Prometheus, read from the brokers."""

from __future__ import annotations

import signal
import threading

from streaming.cli.common import kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    command = commands.add_parser(
        "topic-metrics", help="export topic end offsets and consumer-group lag for Prometheus "
                              "(where no kafka_exporter runs)")
    kafka_arguments(command, "events_topic", "findings_topic", "dead_letter_topic")
    command.add_argument("--consumer_group", default="medimg-stream",
                         help="group whose lag is exported (default: %(default)s)")
    command.add_argument("--port", type=int, default=9309,
                         help="port of /metrics (default: %(default)s)")
    command.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: %(default)s)")
    command.set_defaults(run=run)


def run(args) -> int:
    from streaming.tools.topic_metrics import TopicOffsets, serve_topic_offsets  # noqa: PLC0415
    collector = TopicOffsets(kafka_config(args, "medimg-topic-metrics"),
                             [args.events_topic, args.findings_topic, args.dead_letter_topic],
                             args.consumer_group)
    server = serve_topic_offsets(collector, args.port, args.host)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"topic offsets on http://{args.host}:{args.port}/metrics; Ctrl-C stops.", flush=True)
    stop.wait()
    server.shutdown()
    collector.close()
    return 0

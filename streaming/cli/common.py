"""What every command shares: the user-fixable error, exit status, and the Kafka options."""

from __future__ import annotations

import argparse

EXIT_USAGE = 2
# Beam's own default for --bootstrap_servers; every command uses the same one.
DEFAULT_BOOTSTRAP = "localhost:9092"


class CliError(Exception):
    """A problem the user can fix; the message says how."""


def kafka_arguments(parser: argparse.ArgumentParser, *topics: str) -> None:
    parser.add_argument("--bootstrap_servers", default=DEFAULT_BOOTSTRAP,
                        help="Kafka bootstrap servers (default: %(default)s)")
    defaults = {"events_topic": "image-events", "findings_topic": "findings",
                "dead_letter_topic": "dead-letters"}
    for topic in topics:
        parser.add_argument(f"--{topic}", default=defaults[topic],
                            help="(default: %(default)s)")
    parser.add_argument("--kafka_security_protocol", default="PLAINTEXT",
                        help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; secrets come from "
                             "MEDIMG_KAFKA_* environment variables, never from options")
    parser.add_argument("--kafka_sasl_mechanism", default=None)
    parser.add_argument("--kafka_ssl_cafile", default=None)


def kafka_config(args, client_id: str):
    from streaming.kafka.config import KafkaConfig, KafkaConfigError  # noqa: PLC0415
    try:
        return KafkaConfig(bootstrap_servers=args.bootstrap_servers,
                           security_protocol=args.kafka_security_protocol,
                           sasl_mechanism=args.kafka_sasl_mechanism,
                           ssl_cafile=args.kafka_ssl_cafile, client_id=client_id)
    except KafkaConfigError as error:
        raise CliError(str(error)) from None

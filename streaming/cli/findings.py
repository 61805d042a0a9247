"""``medimg findings``: follow the findings topic as a live table or JSON lines."""

from __future__ import annotations

import sys

from streaming.cli.common import CliError, kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    findings = commands.add_parser("findings", help="follow the findings topic")
    kafka_arguments(findings, "findings_topic", "dead_letter_topic")
    findings.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    findings.add_argument("--limit", type=int, default=None, help="stop after N records")
    findings.add_argument("--timeout", type=float, default=None,
                          help="stop after S seconds without a new record")
    findings.add_argument("--from_beginning", action="store_true",
                          help="start at the oldest record instead of the newest")
    findings.add_argument("--dead_letters", action="store_true",
                          help="also show the dead-letter topic")
    findings.set_defaults(run=run)


def run(args) -> int:
    from streaming.tools import viewer  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    config = kafka_config(args, "medimg-findings")
    topics = [args.findings_topic] + ([args.dead_letter_topic] if args.dead_letters else [])
    stream = viewer.follow(config, topics, from_beginning=args.from_beginning,
                           idle_timeout_s=args.timeout, limit=args.limit)
    try:
        if args.json:
            for _topic, _document, raw in stream:
                sys.stdout.write(raw.decode("utf-8", errors="replace") + "\n")
                sys.stdout.flush()
        else:
            viewer.print_live(stream)
    except BrokerUnavailable as error:
        raise CliError(str(error)) from None
    return 0

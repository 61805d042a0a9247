"""``medimg dead-letters``: dead letters by reason; replay once the cause is fixed."""

from __future__ import annotations

import json

from streaming.cli.common import CliError, kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    dead = commands.add_parser(
        "dead-letters", help="list dead letters by reason; replay chosen ones once fixed",
        description="Lists the dead-letter topic by reason, with the latest examples (event "
                    "id, message, source position). With --replay, re-publishes the original "
                    "events of the chosen dead letters to the events topic as new events "
                    "(new event_id and sent_at; the original id in the record headers and the "
                    "log). Only causes outside the event are replayed (file, roots, limits, "
                    "model, findings size); each dead letter at most once. Exit status 1 when "
                    "a replay refused some of the chosen dead letters.")
    kafka_arguments(dead, "events_topic", "dead_letter_topic")
    from streaming.contracts.events import DEFAULT_MAX_EVENT_BYTES  # noqa: PLC0415
    from streaming.tools.dead_letter_tools import REPLAY_RULES  # noqa: PLC0415
    dead.add_argument("--reason", action="append", choices=sorted(REPLAY_RULES),
                      metavar="REASON", help="only dead letters with this reason (repeatable)")
    dead.add_argument("--event_id", action="append", metavar="EVENT_ID",
                      help="only this event's dead letter (repeatable)")
    dead.add_argument("--since", default=None,
                      help="only dead letters since an age (30m, 2h, 1d) or a time "
                           "(2026-11-26T08:00:00Z)")
    dead.add_argument("--examples", type=int, default=3,
                      help="latest examples shown per reason (default: %(default)s)")
    dead.add_argument("--replay", action="store_true",
                      help="re-publish the chosen dead letters' events as new events")
    dead.add_argument("--dry_run", action="store_true",
                      help="with --replay: show what would be replayed, publish nothing")
    dead.add_argument("--max_event_bytes", type=int, default=DEFAULT_MAX_EVENT_BYTES,
                      help="the job's --max_event_bytes (default: %(default)s)")
    dead.add_argument("--json", action="store_true", help="print JSON")
    dead.set_defaults(run=run)


def run(args) -> int:
    from streaming.tools import dead_letter_tools as tools  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    config = kafka_config(args, "medimg-dead-letters")
    try:
        since = tools.parse_since(args.since) if args.since else None
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.replay and not (args.reason or args.event_id):
        raise CliError("--replay needs --reason or --event_id to choose what to replay; "
                       "run without --replay to list the dead letters first")
    if args.dry_run and not args.replay:
        raise CliError("--dry_run goes with --replay")
    try:
        if not args.replay:
            summary = tools.summarise(config, args.dead_letter_topic, since=since,
                                      examples=args.examples, reasons=args.reason,
                                      event_ids=args.event_id)
            print(json.dumps(summary.to_dict(), indent=2) if args.json
                  else "\n".join(tools.summary_lines(summary)))
            return 0
        report = tools.replay(config, args.dead_letter_topic, args.events_topic,
                              reasons=args.reason, event_ids=args.event_id,
                              dry_run=args.dry_run, since=since,
                              max_event_bytes=args.max_event_bytes)
    except (BrokerUnavailable, TimeoutError) as error:
        raise CliError(str(error)) from None
    print(json.dumps(report.to_dict(), indent=2) if args.json
          else "\n".join(tools.replay_lines(report)))
    return 0 if report.ok else 1

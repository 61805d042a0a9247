"""``medimg reconcile``: lost and duplicated events, counted from the topics."""

from __future__ import annotations

import json

from streaming.cli.common import CliError, kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    reconcile = commands.add_parser(
        "reconcile", help="check from the topics that every event got exactly one outcome",
        description="Reads the events, findings and dead-letter topics from the beginning "
                    "and reports events without an outcome (lost), events with more "
                    "than one (duplicated), and event_ids reused for different images "
                    "(conflicts). Exit status 1 when any are lost or duplicated, or a "
                    "conflict has no event_id_conflict dead letter.")
    kafka_arguments(reconcile, "events_topic", "findings_topic", "dead_letter_topic")
    from streaming.contracts.events import DEFAULT_MAX_EVENT_BYTES  # noqa: PLC0415
    reconcile.add_argument("--max_event_bytes", type=int, default=DEFAULT_MAX_EVENT_BYTES,
                           help="the job's --max_event_bytes (default: %(default)s)")
    reconcile.add_argument("--json", action="store_true", help="print JSON")
    reconcile.set_defaults(run=run)


def run(args) -> int:
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    from streaming.tools.reconcile import reconcile  # noqa: PLC0415
    config = kafka_config(args, "medimg-reconcile")
    try:
        result = reconcile(config, args.events_topic, args.findings_topic,
                           args.dead_letter_topic, args.max_event_bytes)
    except (BrokerUnavailable, TimeoutError) as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"events {result.events} ({result.event_records} records), findings "
              f"{result.findings}, dead letters {result.dead_letters}, lost {len(result.lost)}, "
              f"duplicated {len(result.duplicated)}, outcomes without an event "
              f"{result.unmatched_outcomes}, event_id conflicts {len(result.conflicts)}")
        for reason, count in result.dead_letter_reasons.items():
            print(f"  dead letters {reason}: {count}")
        for name in result.lost[:20]:
            print(f"  lost: {name}")
        for name, count in list(result.duplicated.items())[:20]:
            print(f"  duplicated: {name} x{count}")
        for name, count in list(result.conflicts.items())[:20]:
            flagged = "" if name not in result.unflagged_conflicts else " (no dead letter!)"
            print(f"  conflict: {name} used for {count} different images{flagged}")
    return 0 if result.ok else 1

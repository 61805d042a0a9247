"""``medimg publish``: a simulated modality; image files become events."""

from __future__ import annotations

import os
import sys

from streaming.cli.common import CliError, kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    publish = commands.add_parser("publish", help="simulate a modality: publish image events")
    publish.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    kafka_arguments(publish, "events_topic")
    publish.add_argument("--sender", default="MEDIMG_SIM", help="AE title or system name")
    publish.add_argument("--priority", choices=("routine", "urgent"), default="routine")
    publish.add_argument("--modality", default="OT",
                         help="modality for PNG/JPEG files, which have no header (default: OT)")
    publish.add_argument("--rate", type=float, default=0.0,
                         help="events per second (default: as fast as possible)")
    publish.add_argument("--repeat", type=int, default=1,
                         help="announce each file this many times, each a new event")
    publish.add_argument("--partitions", type=int, default=3,
                         help="partitions if the events topic must be created")
    publish.add_argument("--no_sha256", action="store_true",
                         help="do not send the files' sha256 (the job then cannot verify them)")
    publish.set_defaults(run=run)


def run(args) -> int:
    from streaming.tools import modality  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable, ensure_topics  # noqa: PLC0415
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise CliError(f"no such file or folder: {', '.join(missing)}")
    found = modality.inventory(args.paths, sender=args.sender, priority=args.priority,
                               modality=args.modality, with_sha256=not args.no_sha256)
    for path, why in found.skipped.items():
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not found.events:
        raise CliError("no DICOM, PNG or JPEG files found in the given paths")
    config = kafka_config(args, "medimg-publish")
    events = [e if round_ == 0 else modality.restamp(e)
              for round_ in range(args.repeat) for e in found.events]
    try:
        ensure_topics(config, {args.events_topic: args.partitions})
        sent = modality.publish_events(config, args.events_topic, events, rate_per_s=args.rate)
    except BrokerUnavailable as error:
        raise CliError(str(error)) from None
    print(f"published {sent} events to {args.events_topic} at {args.bootstrap_servers}"
          + (f" ({len(found.skipped)} files skipped)" if found.skipped else ""))
    return 0

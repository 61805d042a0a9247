"""``medimg report``: findings become DICOM structured reports and heatmaps in the PACS."""

from __future__ import annotations

import json
import sys

from streaming.cli.common import CliError, kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    report = commands.add_parser(
        "report", help="write each scored finding back to the PACS as a DICOM SR and heatmap")
    kafka_arguments(report, "findings_topic")
    report.add_argument("--pacs_url", required=True,
                        help="the PACS's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    report.add_argument("--model_registry", required=True,
                        help="the registry holding the models that scored the findings")
    report.add_argument("--report_dead_letter_topic", default="report-dead-letters",
                        help="where findings that could not be reported go (default: %(default)s)")
    report.add_argument("--consumer_group", default="medimg-report",
                        help="the reporter's own consumer group (default: %(default)s)")
    report.add_argument("--no_heatmaps", action="store_true",
                        help="structured reports only (no Grad-CAM, no TensorFlow needed)")
    report.add_argument("--pacs_attempts", type=int, default=5,
                        help="tries per PACS call, with exponential backoff (default: %(default)s)")
    report.add_argument("--limit", type=int, default=None, help="stop after N findings")
    report.add_argument("--timeout", type=float, default=None,
                        help="stop after S seconds without a new finding")
    report.set_defaults(run=run)


def run(args) -> int:
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    from streaming.modeling.registry import ModelRegistry  # noqa: PLC0415
    from streaming.reporter.consumer import run_reporter  # noqa: PLC0415
    from streaming.reporter.pacs import Pacs  # noqa: PLC0415
    from streaming.reporter.reports import Reporter  # noqa: PLC0415
    from streaming.runtime import lifecycle  # noqa: PLC0415

    if args.pacs_attempts < 1:
        raise CliError("--pacs_attempts must be at least 1")
    lifecycle.install_signal_handlers()
    reporter = Reporter(Pacs(args.pacs_url, attempts=args.pacs_attempts),
                        ModelRegistry(args.model_registry), heatmaps=not args.no_heatmaps)
    try:
        counts = run_reporter(kafka_config(args, "medimg-report"), reporter,
                              findings_topic=args.findings_topic,
                              dead_letter_topic=args.report_dead_letter_topic,
                              group=args.consumer_group, idle_timeout_s=args.timeout,
                              limit=args.limit)
    except BrokerUnavailable as error:
        raise CliError(str(error)) from None
    sys.stdout.write(json.dumps({"reported": counts.reported,
                                 "already_stored": counts.already_stored,
                                 "skipped": counts.skipped,
                                 "dead_letters": counts.dead_letters}) + "\n")
    return 0

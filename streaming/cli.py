"""``medimg``: the one command line of the product.

    medimg demo        the whole pipeline on synthetic studies, offline
    medimg broker      an embedded Kafka-compatible broker on loopback
    medimg stream      the streaming diagnostic job (Beam pipeline options accepted)
    medimg publish     a simulated modality: image files become events
    medimg findings    follow the findings topic as a live table or JSON lines
    medimg train       train a model and register it in a model registry

Errors end with exit status 2 and one line that says what to do next.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from streaming import logs

EXIT_USAGE = 2
# Beam's own default for --bootstrap_servers; every command uses the same one.
DEFAULT_BOOTSTRAP = "localhost:9092"


class CliError(Exception):
    """A problem the user can fix; the message says how."""


def _kafka_arguments(parser: argparse.ArgumentParser, *topics: str) -> None:
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


def _kafka_config(args, client_id: str):
    from streaming.kafka.config import KafkaConfig, KafkaConfigError  # noqa: PLC0415
    try:
        return KafkaConfig(bootstrap_servers=args.bootstrap_servers,
                           security_protocol=args.kafka_security_protocol,
                           sasl_mechanism=args.kafka_sasl_mechanism,
                           ssl_cafile=args.kafka_ssl_cafile, client_id=client_id)
    except KafkaConfigError as error:
        raise CliError(str(error)) from None


# -- commands ------------------------------------------------------------------------

def cmd_broker(args) -> int:
    from streaming.broker import EmbeddedBroker  # noqa: PLC0415
    broker = EmbeddedBroker(port=args.port).start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"Kafka-compatible broker (Tansu) listening on {broker.bootstrap_servers}; "
          "topics live in memory. Ctrl-C stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            if broker.process.poll() is not None:
                raise CliError(f"the broker exited unexpectedly (code {broker.process.returncode})")
    finally:
        broker.stop()
    return 0


def cmd_stream(args, beam_argv: list[str]) -> int:
    from streaming.options import OptionsError  # noqa: PLC0415
    from streaming.pipeline import run  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        run(beam_argv)
    except (OptionsError, BrokerUnavailable, RegistryError) as error:
        raise CliError(str(error)) from None
    return 0


def cmd_publish(args) -> int:
    from streaming import modality  # noqa: PLC0415
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
    config = _kafka_config(args, "medimg-publish")
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


def cmd_findings(args) -> int:
    from streaming import viewer  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    config = _kafka_config(args, "medimg-findings")
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


def cmd_train(args) -> int:
    import dataclasses  # noqa: PLC0415
    from batch_training.promotion import GatePolicy  # noqa: PLC0415
    from batch_training.recipe import parse_input_size, run_recipe  # noqa: PLC0415
    from batch_training.train import TrainingConfig  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        height, width = parse_input_size(args.input_size)
    except ValueError as error:
        raise CliError(f"--input_size: {error}") from None
    given = {name: getattr(args, name) for name in ("epochs", "batch_size")
             if getattr(args, name) is not None}
    try:
        config = TrainingConfig(
            data=args.data, model_registry=args.model_registry, model_name=args.model_name,
            architecture=args.architecture, height=height, width=width,
            channels=args.channels, seed=args.seed,
            modalities=tuple(args.modalities.split(",")),
            body_parts=tuple(p for p in args.body_parts.split(",") if p),
            class_names=tuple(args.class_names.split(",")) if args.class_names else None,
            target_sensitivity=args.target_sensitivity, promote="never", **given)
        policy = dataclasses.replace(GatePolicy(), target_sensitivity=args.target_sensitivity,
                                     auc_tolerance=args.auc_tolerance)
        decision = run_recipe(config, labels_csv=args.labels_csv, policy=policy)
    except (FileNotFoundError, RegistryError, ValueError) as error:
        raise CliError(str(error)) from None
    print(json.dumps(decision.to_dict(), indent=2))
    return 0 if decision.promoted else 1


def cmd_reconcile(args) -> int:
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    from streaming.reconcile import reconcile  # noqa: PLC0415
    config = _kafka_config(args, "medimg-reconcile")
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
              f"{result.unmatched_outcomes}")
        for reason, count in result.dead_letter_reasons.items():
            print(f"  dead letters {reason}: {count}")
        for name in result.lost[:20]:
            print(f"  lost: {name}")
        for name, count in list(result.duplicated.items())[:20]:
            print(f"  duplicated: {name} x{count}")
    return 0 if result.ok else 1


def cmd_dead_letters(args) -> int:
    from streaming import dead_letter_tools as tools  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    config = _kafka_config(args, "medimg-dead-letters")
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


def cmd_evaluate(args) -> int:
    from batch_training.evaluation import run_evaluate  # noqa: PLC0415
    from streaming.modeling.loading import ModelRefused  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        run_evaluate(args.model_registry, args.model_name, args.model, args.data, args.split,
                     json_path=args.json, report_dir=args.report,
                     class_names=args.class_names.split(",") if args.class_names else None,
                     labels_csv=args.labels_csv)
    except (FileNotFoundError, RegistryError, ModelRefused, ValueError) as error:
        raise CliError(str(error)) from None
    return 0


def cmd_models(args) -> int:
    from streaming import registry_view  # noqa: PLC0415
    from streaming.modeling.loading import ModelRefused  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        return registry_view.run(args)
    except (RegistryError, ModelRefused, ValueError) as error:
        raise CliError(str(error)) from None


def cmd_demo(args) -> int:
    from streaming.demo.run import DemoError, run_demo  # noqa: PLC0415
    # The demo's own display is the interface; its job and broker log to files.
    logs.configure(os.environ.get("MEDIMG_LOG_LEVEL", "WARNING"))
    try:
        return run_demo(workdir=args.workdir, studies=args.studies, seed=args.seed,
                        keep_running=False)
    except DemoError as error:
        raise CliError(str(error)) from None


# -- parser --------------------------------------------------------------------------

def build_parser(stream_options: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``stream_options=False`` leaves out the streaming job's own
    options, which import Apache Beam (seconds) that no other command needs."""
    parser = argparse.ArgumentParser(
        prog="medimg", description="Streaming diagnostic pipeline for medical images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `medimg COMMAND --help` for a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the whole pipeline on synthetic studies, offline")
    demo.add_argument("--workdir", default=".medimg-demo",
                      help="where the demo keeps its studies, registry and logs "
                           "(default: %(default)s)")
    demo.add_argument("--studies", type=int, default=24, help="synthetic studies to send")
    demo.add_argument("--seed", type=int, default=7)

    broker = commands.add_parser("broker", help="start the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=int, default=9092, help="loopback port (default: %(default)s)")

    stream = commands.add_parser(
        "stream", help="run the streaming diagnostic job",
        description="Run the streaming job. Besides the options below, every Apache Beam "
                    "pipeline option is accepted (--runner, --project, --region, "
                    "--temp_location, ...). Without --runner the job runs locally on "
                    "Beam's FnApiRunner.")
    if stream_options:
        from streaming.options import StreamingOptions  # noqa: PLC0415
        StreamingOptions._add_argparse_args(stream)  # noqa: SLF001 - show the job's options
    stream.add_argument("--bootstrap_servers", default=DEFAULT_BOOTSTRAP,
                        help="Kafka bootstrap servers, comma-separated (default: %(default)s)")
    stream.add_argument("--runner", default=None,
                        help="Beam runner: FnApiRunner (default, local), DataflowRunner, "
                             "FlinkRunner, ...")

    publish = commands.add_parser("publish", help="simulate a modality: publish image events")
    publish.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    _kafka_arguments(publish, "events_topic")
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

    findings = commands.add_parser("findings", help="follow the findings topic")
    _kafka_arguments(findings, "findings_topic", "dead_letter_topic")
    findings.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    findings.add_argument("--limit", type=int, default=None, help="stop after N records")
    findings.add_argument("--timeout", type=float, default=None,
                          help="stop after S seconds without a new record")
    findings.add_argument("--from_beginning", action="store_true",
                          help="start at the oldest record instead of the newest")
    findings.add_argument("--dead_letters", action="store_true",
                          help="also show the dead-letter topic")

    train = commands.add_parser(
        "train", help="train, evaluate and gate a model; promote it if it earns it",
        description="The full recipe: the Beam preprocessing pipeline, training, "
                    "evaluation and the promotion gate (the nightly DAG runs the same). "
                    "Exit status 1 when the gate rejects the new version.")
    train.add_argument("--data", required=True,
                       help="a MedMNIST-style .npz, a folder <split>/<class>/*.png|jpg|dcm, "
                            "or a DICOM folder with --labels_csv")
    train.add_argument("--labels_csv", default=None,
                       help="CSV with path,label[,split] for a folder of DICOM files")
    train.add_argument("--model_registry", required=True, help="registry folder or URI")
    train.add_argument("--model_name", default="pneumonia-cnn")
    train.add_argument("--architecture", default="compact_cnn",
                       choices=("compact_cnn", "residual_net", "resnet50"))
    train.add_argument("--input_size", default="28", help="28 or HEIGHTxWIDTH (default: 28)")
    train.add_argument("--channels", type=int, choices=(1, 3), default=1)
    train.add_argument("--epochs", type=int, default=None,
                       help="most epochs (early stopping on validation AUC may end sooner)")
    train.add_argument("--batch_size", type=int, default=None)
    train.add_argument("--seed", type=int, default=1234)
    train.add_argument("--modalities", default="CR,DX",
                       help="modalities the model applies to (default: %(default)s)")
    train.add_argument("--body_parts", default="CHEST",
                       help="body parts it applies to; empty for any (default: %(default)s)")
    train.add_argument("--class_names", default=None,
                       help="comma-separated names for label 0, 1, ... of an .npz")
    train.add_argument("--target_sensitivity", type=float, default=0.95,
                       help="the gate's sensitivity target at the chosen threshold")
    train.add_argument("--auc_tolerance", type=float, default=0.01,
                       help="how far below production's AUC a new version may be")

    reconcile = commands.add_parser(
        "reconcile", help="check from the topics that every event got exactly one outcome",
        description="Reads the events, findings and dead-letter topics from the beginning "
                    "and reports events without an outcome (lost) and events with more "
                    "than one (duplicated). Exit status 1 when any are found.")
    _kafka_arguments(reconcile, "events_topic", "findings_topic", "dead_letter_topic")
    from streaming.events import DEFAULT_MAX_EVENT_BYTES  # noqa: PLC0415
    reconcile.add_argument("--max_event_bytes", type=int, default=DEFAULT_MAX_EVENT_BYTES,
                           help="the job's --max_event_bytes (default: %(default)s)")
    reconcile.add_argument("--json", action="store_true", help="print JSON")

    dead = commands.add_parser(
        "dead-letters", help="list dead letters by reason; replay chosen ones once fixed",
        description="Lists the dead-letter topic by reason, with the latest examples (event "
                    "id, message, source position). With --replay, re-publishes the original "
                    "events of the chosen dead letters to the events topic as new events "
                    "(new event_id and sent_at; the original id in the record headers and the "
                    "log). Only causes outside the event are replayed (file, roots, limits, "
                    "model, findings size); each dead letter at most once. Exit status 1 when "
                    "a replay refused some of the chosen dead letters.")
    _kafka_arguments(dead, "events_topic", "dead_letter_topic")
    from streaming.dead_letter_tools import REPLAY_RULES  # noqa: PLC0415
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

    evaluate = commands.add_parser("evaluate", help="evaluate a registered model on labeled data")
    evaluate.add_argument("--model_registry", required=True)
    evaluate.add_argument("--model_name", default="pneumonia-cnn")
    evaluate.add_argument("--model", default=None, help="version (default: production)")
    evaluate.add_argument("--data", required=True,
                          help="an .npz, a <split>/<class>/ folder, or a DICOM folder with "
                               "--labels_csv")
    evaluate.add_argument("--labels_csv", default=None,
                          help="CSV with columns path,label[,split] labeling --data's files")
    evaluate.add_argument("--split", default="val",
                          help="which split: <split>_images/_labels of an .npz, or the "
                               "<split>/ folder (default: %(default)s)")
    evaluate.add_argument("--json", default=None, help="write the metrics here as JSON")
    evaluate.add_argument("--report", default=None,
                          help="write ROC, calibration and confusion plots and report.md here")
    evaluate.add_argument("--class_names", default=None,
                          help="comma-separated names for label 0, 1, ... of an .npz")

    models = commands.add_parser("models", help="list, show, promote or roll back model versions")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION",
                                            required=True)
    for action, text in (("list", "versions with their state and metrics"),
                         ("show", "one version's metadata and status"),
                         ("promote", "make a version production (after the serving check)"),
                         ("rollback", "put the previous production version back")):
        sub = models_commands.add_parser(action, help=text)
        sub.add_argument("--model_registry", required=True)
        sub.add_argument("--model_name", default="pneumonia-cnn")
        if action in ("show", "promote"):
            sub.add_argument("version")
        if action == "promote":
            sub.add_argument("--data", default=None,
                             help="validation data: run the full gate instead of the "
                                  "serving check alone")
            sub.add_argument("--reason", default="promoted by an operator")
        if action == "rollback":
            sub.add_argument("--to", default=None, help="a version (default: the previous one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logs.configure()
    parser = build_parser(stream_options=bool(argv) and argv[0] == "stream")
    if argv and argv[0] == "stream":
        # Beam reads its own options from the full list; argparse here only checks ours.
        args, _unknown = parser.parse_known_args(argv)
        handler = lambda: cmd_stream(args, argv[1:])  # noqa: E731
    else:
        args = parser.parse_args(argv)
        handlers = {"broker": cmd_broker, "publish": cmd_publish, "findings": cmd_findings,
                    "train": cmd_train, "evaluate": cmd_evaluate, "models": cmd_models,
                    "reconcile": cmd_reconcile, "dead-letters": cmd_dead_letters,
                    "demo": cmd_demo}
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = lambda: handlers[args.command](args)  # noqa: E731
    try:
        return handler()
    except CliError as error:
        print(f"medimg {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""``medimg gateway``: the DICOM gateway modalities and PACS send to (C-STORE, STOW-RS)."""

from __future__ import annotations

from streaming.cli.common import CliError, kafka_arguments, kafka_config


def add_parser(commands) -> None:
    """Register the command and its options."""
    gateway = commands.add_parser(
        "gateway", help="receive DICOM (C-STORE, C-ECHO, STOW-RS), store it, announce events")
    gateway.add_argument("--ae_title", default="MEDIMG", help="the gateway's AE title "
                         "(default: %(default)s)")
    gateway.add_argument("--allowed_callers", required=True, metavar="AE[@ADDRESS],...",
                         help="calling AE titles that may send, each optionally pinned to "
                              "peer IP addresses; every other association is rejected")
    gateway.add_argument("--storage_root", required=True,
                         help="folder (or gs:// prefix) where instances are stored; the job's "
                              "--allowed_roots must include it")
    gateway.add_argument("--host", default="127.0.0.1",
                         help="interface for DICOM and DICOMweb (default: %(default)s)")
    gateway.add_argument("--port", type=int, default=11112,
                         help="DICOM port (default: %(default)s)")
    gateway.add_argument("--dicomweb_port", type=int, default=None,
                         help="serve STOW-RS (POST /studies) on this port (default: off)")
    gateway.add_argument("--max_pdu", type=int, default=16382,
                         help="largest PDU accepted, bytes; 0 is unlimited (default: %(default)s)")
    gateway.add_argument("--max_file_bytes", type=int, default=256 * 1024 * 1024,
                         help="largest instance accepted; larger ones are refused "
                              "(default: %(default)s, the job's own limit)")
    gateway.add_argument("--broker_timeout_s", type=float, default=10.0,
                         help="how long to wait for the broker's acknowledgement before "
                              "answering 0xA700 so the sender retries; keep it below the "
                              "senders' DIMSE timeout (default: %(default)s)")
    gateway.add_argument("--tls_certfile", default=None, help="serve DICOM over TLS with this "
                         "certificate (PEM) and --tls_keyfile")
    gateway.add_argument("--tls_keyfile", default=None)
    gateway.add_argument("--tls_cafile", default=None,
                         help="require senders' certificates signed by this CA (PEM)")
    gateway.add_argument("--series_complete_s", type=float, default=0.0,
                         help="publish a series-complete notice once a series received no "
                              "instance for this many seconds (Orthanc's default is 60; "
                              "default: off)")
    gateway.add_argument("--notices_topic", default="series-complete",
                         help="topic of series-complete notices (default: %(default)s)")
    gateway.add_argument("--priority", choices=("routine", "urgent"), default="routine")
    gateway.add_argument("--partitions", type=int, default=3,
                         help="partitions if a topic must be created")
    gateway.add_argument("--metrics_port", type=int, default=None,
                         help="serve Prometheus /metrics on this port (default: off)")
    gateway.add_argument("--metrics_host", default="127.0.0.1",
                         help="interface for /metrics (default: %(default)s)")
    kafka_arguments(gateway, "events_topic")
    gateway.set_defaults(run=run)


def run(args) -> int:
    try:
        import pynetdicom  # noqa: F401, PLC0415 - only gateways install the extra
    except ImportError:
        raise CliError("the DICOM gateway needs pynetdicom: pip install 'medimg[gateway]'"
                       ) from None
    from streaming.gateway import metrics  # noqa: PLC0415
    from streaming.gateway.config import (GatewayConfig, GatewayConfigError,  # noqa: PLC0415
                                          TlsSettings, parse_callers)
    from streaming.gateway.service import Gateway  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable, ensure_topics  # noqa: PLC0415

    if bool(args.tls_certfile) != bool(args.tls_keyfile):
        raise CliError("TLS needs both --tls_certfile and --tls_keyfile")
    try:
        config = GatewayConfig(
            ae_title=args.ae_title, callers=parse_callers(args.allowed_callers),
            storage_root=args.storage_root, events_topic=args.events_topic, host=args.host,
            port=args.port, dicomweb_port=args.dicomweb_port, max_pdu=args.max_pdu,
            max_file_bytes=args.max_file_bytes, broker_timeout_s=args.broker_timeout_s,
            tls=TlsSettings(args.tls_certfile, args.tls_keyfile, args.tls_cafile)
            if args.tls_certfile else None,
            series_complete_s=args.series_complete_s, notices_topic=args.notices_topic,
            priority=args.priority)
    except GatewayConfigError as error:
        raise CliError(str(error)) from None
    kafka = kafka_config(args, "medimg-gateway")
    topics = {args.events_topic: args.partitions}
    if args.series_complete_s > 0:
        topics[args.notices_topic] = args.partitions
    try:
        ensure_topics(kafka, topics)
    except BrokerUnavailable as error:
        raise CliError(str(error)) from None
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, args.metrics_host)
    try:
        gateway = Gateway(config, kafka).start()
    except OSError as error:
        raise CliError(f"cannot listen on {args.host}:{args.port} ({error.strerror}); "
                       "pick a free port with --port") from None
    print(f"DICOM gateway {config.ae_title} listening on {config.host}:{gateway.scp.port}"
          + (f", STOW-RS on {'https' if config.tls else 'http'}://{config.host}:"
             f"{gateway.stow.port}/studies"
             if gateway.stow else "") + f"; announcing on {args.events_topic}", flush=True)
    gateway.run_until_stopped()
    return 0

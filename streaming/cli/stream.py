"""``medimg stream``: the streaming job (every Beam pipeline option is accepted)."""

from __future__ import annotations

from streaming.cli.common import CliError, DEFAULT_BOOTSTRAP


def add_parser(commands, job_options: bool = False) -> None:
    """Register the command; ``job_options`` adds the job's own options, which import
    Apache Beam (seconds) that no other command needs."""
    stream = commands.add_parser(
        "stream", help="run the streaming diagnostic job",
        description="Run the streaming job. Besides the options below, every Apache Beam "
                    "pipeline option is accepted (--runner, --project, --region, "
                    "--temp_location, ...). Without --runner the job runs locally on "
                    "Beam's FnApiRunner.")
    if job_options:
        from streaming.job.options import StreamingOptions  # noqa: PLC0415
        StreamingOptions._add_argparse_args(stream)  # noqa: SLF001 - show the job's options
    stream.add_argument("--bootstrap_servers", default=DEFAULT_BOOTSTRAP,
                        help="Kafka bootstrap servers, comma-separated (default: %(default)s)")
    stream.add_argument("--runner", default=None,
                        help="Beam runner: FnApiRunner (default, local), DataflowRunner, "
                             "FlinkRunner, ...")
    stream.set_defaults(run=run)


def run(args) -> int:
    from streaming.job.options import OptionsError  # noqa: PLC0415
    from streaming.job.pipeline import run as run_job  # noqa: PLC0415
    from streaming.kafka.admin import BrokerUnavailable  # noqa: PLC0415
    from streaming.kafka.lease import GroupLeaseHeld  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        run_job(args.beam_argv)
    except (OptionsError, BrokerUnavailable, RegistryError, GroupLeaseHeld) as error:
        raise CliError(str(error)) from None
    return 0

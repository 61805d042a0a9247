"""``medimg``: the one command line of the product.

Each command is a module here that registers its own options (``add_parser``) and
runs them (``run``), importing what it drives only when it runs, so ``medimg --help``
stays fast (no Beam, no TensorFlow). Adding a command is adding a module. Errors end
with exit status 2 and one line that says what to do next. May import anything in
``streaming`` and ``batch_training``, lazily; nothing imports the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from streaming.cli.common import EXIT_USAGE, CliError
from streaming.runtime import lifecycle, logs

__all__ = ["EXIT_USAGE", "build_parser", "main"]
_NOT_COMMANDS = {"common"}
_STREAM = "stream"


def _command_modules():
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_COMMANDS:
            yield importlib.import_module(f"{__name__}.{module.name}")


def build_parser(stream_options: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``stream_options=False`` leaves out the streaming job's own
    options, which import Apache Beam (seconds) that no other command needs."""
    parser = argparse.ArgumentParser(
        prog="medimg", description="Streaming diagnostic pipeline for medical images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `medimg COMMAND --help` for a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        if module.__name__.endswith(f".{_STREAM}"):
            module.add_parser(commands, job_options=stream_options)
        else:
            module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    streaming_job = bool(argv) and argv[0] == _STREAM
    if streaming_job:
        # Before the seconds of imports: a stop that arrives while the job starts is a
        # request to drain nothing, not a kill (exit 0, not -15).
        lifecycle.install_signal_handlers()
    logs.configure()
    parser = build_parser(stream_options=streaming_job)
    if streaming_job:
        # Beam reads its own options from the full list; argparse here only checks ours.
        args, _unknown = parser.parse_known_args(argv)
        args.beam_argv = argv[1:]
    else:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
    try:
        return args.run(args)
    except CliError as error:
        print(f"medimg {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

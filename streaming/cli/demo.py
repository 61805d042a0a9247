"""``medimg demo``: the whole pipeline offline on synthetic studies."""

from __future__ import annotations

import os

from streaming.runtime import logs
from streaming.cli.common import CliError


def add_parser(commands) -> None:
    """Register the command and its options."""
    demo = commands.add_parser("demo", help="run the whole pipeline on synthetic studies, offline")
    demo.add_argument("--workdir", default=".medimg-demo",
                      help="where the demo keeps its studies, registry and logs "
                           "(default: %(default)s)")
    demo.add_argument("--studies", type=int, default=24, help="synthetic studies to send")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=run)


def run(args) -> int:
    from streaming.local.demo import DemoError, run_demo  # noqa: PLC0415
    # The demo's own display is the interface; its job and broker log to files.
    logs.configure(os.environ.get("MEDIMG_LOG_LEVEL", "WARNING"))
    try:
        return run_demo(workdir=args.workdir, studies=args.studies, seed=args.seed,
                        keep_running=False)
    except DemoError as error:
        raise CliError(str(error)) from None

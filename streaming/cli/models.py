"""``medimg models``: list, show, promote or roll back model versions."""

from __future__ import annotations

from streaming.cli.common import CliError


def add_parser(commands) -> None:
    """Register the command and its options."""
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
    models.set_defaults(run=run)


def run(args) -> int:
    from streaming.tools import registry_view  # noqa: PLC0415
    from streaming.modeling.loading import ModelRefused  # noqa: PLC0415
    from streaming.modeling.registry import RegistryError  # noqa: PLC0415
    try:
        return registry_view.run(args)
    except (RegistryError, ModelRefused, ValueError) as error:
        raise CliError(str(error)) from None

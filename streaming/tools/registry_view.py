"""``medimg models``: what is in the model registry, and moving its production pointer."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from streaming.modeling.loading import load_model
from streaming.modeling.registry import LAST_KNOWN_GOOD, ModelRegistry


def _validation(metadata) -> dict:
    metrics = metadata.extra.get("metrics") or {}
    return metrics.get("validation") or {"auc": metrics.get("val_auc")}


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def list_versions(registry: ModelRegistry, name: str, console: Console) -> None:
    versions = registry.versions(name)
    if not versions:
        console.print(f"no versions of {name!r} in {registry.root}; "
                      f"`medimg train --model_registry {registry.root}` makes one")
        return
    production = registry.production(name)
    known_good = registry.pointer(name, LAST_KNOWN_GOOD)
    table = Table(title=f"{name} in {registry.root}")
    for column in ("version", "created", "state", "val AUC", "sensitivity", "specificity",
                   "threshold", "data", "serving"):
        table.add_column(column)
    for version in versions:
        metadata = registry.metadata(name, version)
        status = registry.status(name, version)
        validation = _validation(metadata)
        marks = [m for m, on in (("production", version == production),
                                 ("last known good", version == known_good)) if on]
        state = status["state"]
        if state == "rejected":
            state = f"rejected: {status.get('reason', '')}"
        table.add_row(version, metadata.created_at[:19], state, _number(validation.get("auc")),
                      _number(validation.get("sensitivity")),
                      _number(validation.get("specificity")), f"{metadata.threshold:.3f}",
                      str(metadata.extra.get("data_fingerprint") or "-")[:15],
                      ", ".join(marks))
    console.print(table)


def run(args, console: Console | None = None) -> int:
    console = console or Console()
    registry = ModelRegistry(args.model_registry)
    name = args.model_name
    if args.models_command == "list":
        list_versions(registry, name, console)
    elif args.models_command == "show":
        document = {"metadata": registry.metadata(name, args.version).to_dict(),
                    "status": registry.status(name, args.version),
                    "production": registry.production(name) == args.version}
        console.print_json(json.dumps(document))
    elif args.models_command == "promote":
        if args.data:
            from batch_training.promotion import gate  # noqa: PLC0415 - training extra
            decision = gate(registry.root, name, args.version, args.data)
            console.print(("promoted: " if decision.promoted else "rejected: ")
                          + decision.reason)
            return 0 if decision.promoted else 1
        load_model(registry, name, args.version)  # the serving loader refuses a broken model
        registry.promote(name, args.version, reason=args.reason)
        console.print(f"{name} production is now version {args.version}")
    elif args.models_command == "rollback":
        version = registry.rollback(name, args.to)
        console.print(f"{name} production is now version {version}")
    return 0

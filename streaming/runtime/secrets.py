"""Client secrets (Kafka, Redis): from an environment variable, or the file it names.

Never from command-line options: those show in process lists and in Dataflow's UI.
``<VARIABLE>_FILE`` suits mounted secrets (Kubernetes, Docker, Secret Manager volumes).
"""

from __future__ import annotations

import os
from typing import Mapping


class SecretUnreadable(ValueError):
    """A ``_FILE`` variable names a file that cannot be read; the message says which."""


def read_secret(variable: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``variable``, else the stripped contents of ``$variable_FILE``."""
    environ = os.environ if environ is None else environ
    if environ.get(variable):
        return environ[variable]
    path = environ.get(f"{variable}_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as error:
        raise SecretUnreadable(
            f"{variable}_FILE names {path!r}, which cannot be read ({error.strerror})") from None

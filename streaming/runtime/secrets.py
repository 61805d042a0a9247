"""Client secrets (Kafka, Redis): from an environment variable, the file it names, or
Secret Manager.

Never from command-line options: those show in process lists and in Dataflow's UI.
``<VARIABLE>_FILE`` suits mounted secrets (Kubernetes, Docker). Dataflow workers have no
environment of ours, so there a variable may instead name a Secret Manager version
(``--secret_manager_secrets VARIABLE=projects/P/secrets/S/versions/V``): the name travels
with the job, the value is read on the worker with its service account.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping

# The variables a reference may stand for: a typo must fail at launch, not on a worker.
SECRET_VARIABLES = ("MEDIMG_KAFKA_SASL_USERNAME", "MEDIMG_KAFKA_SASL_PASSWORD",
                    "MEDIMG_KAFKA_SSL_KEY_PASSWORD", "MEDIMG_REDIS_USERNAME",
                    "MEDIMG_REDIS_PASSWORD")
_VERSION_NAME = re.compile(r"projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+")


class SecretUnreadable(ValueError):
    """A secret's file or Secret Manager version cannot be read; the message says which."""


def parse_secret_manager_refs(value: str | None) -> tuple[tuple[str, str], ...]:
    """``VARIABLE=projects/.../versions/V,...`` -> ((variable, version name), ...)."""
    refs = []
    for item in (part.strip() for part in (value or "").split(",")):
        if not item:
            continue
        variable, _, name = item.partition("=")
        if variable not in SECRET_VARIABLES:
            raise ValueError(f"--secret_manager_secrets: {variable!r} is not one of "
                             f"{', '.join(SECRET_VARIABLES)}")
        if not _VERSION_NAME.fullmatch(name):
            raise ValueError(f"--secret_manager_secrets: {variable} must name a version, "
                             "projects/PROJECT/secrets/SECRET/versions/VERSION (or latest)")
        refs.append((variable, name))
    return tuple(refs)


def access_secret_version(name: str) -> str:
    """The payload of a Secret Manager version, read with the worker's credentials."""
    from google.cloud import secretmanager  # noqa: PLC0415 - only where references are used
    response = secretmanager.SecretManagerServiceClient().access_secret_version(name=name)
    return response.payload.data.decode("utf-8").strip()


def read_secret(variable: str, environ: Mapping[str, str] | None = None,
                secret_manager: Mapping[str, str] | None = None,
                access: Callable[[str], str] | None = None) -> str | None:
    """The value of ``variable``, else the contents of ``$variable_FILE``, else the
    Secret Manager version ``secret_manager[variable]`` names. The local ways win, so a
    mounted file overrides a reference in tests and on premises."""
    environ = os.environ if environ is None else environ
    if environ.get(variable):
        return environ[variable]
    path = environ.get(f"{variable}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as error:
            raise SecretUnreadable(f"{variable}_FILE names {path!r}, which cannot be read "
                                   f"({error.strerror})") from None
    name = (secret_manager or {}).get(variable)
    if not name:
        return None
    try:
        return (access or access_secret_version)(name)
    except Exception as error:  # noqa: BLE001 - any client error: say which secret, not why
        raise SecretUnreadable(
            f"{variable} comes from Secret Manager {name}, which cannot be read "
            f"({type(error).__name__}): grant the worker's service account "
            "roles/secretmanager.secretAccessor on it") from None

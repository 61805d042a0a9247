"""How the job reaches Kafka: bootstrap servers, TLS and SASL.

Non-secret settings (protocol, mechanism, CA file path) are pipeline options.
Secrets never are: command lines show in process lists and in Dataflow's UI. They
are read on the worker, when a client is created, from the environment or from a
file named by the environment:

    MEDIMG_KAFKA_SASL_USERNAME      / MEDIMG_KAFKA_SASL_USERNAME_FILE
    MEDIMG_KAFKA_SASL_PASSWORD      / MEDIMG_KAFKA_SASL_PASSWORD_FILE
    MEDIMG_KAFKA_SSL_KEY_PASSWORD   / MEDIMG_KAFKA_SSL_KEY_PASSWORD_FILE

or, where workers have no such environment (Dataflow), from the Secret Manager version
named for the variable by ``--secret_manager_secrets``.

``KafkaConfig`` therefore holds no secret and is safe to pickle into the job graph.
"""

from __future__ import annotations

import dataclasses
import os

from streaming.runtime.secrets import SecretUnreadable, read_secret

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

_SECRETS = {
    # kafka-python setting: environment variable naming it
    "sasl_plain_username": "MEDIMG_KAFKA_SASL_USERNAME",
    "sasl_plain_password": "MEDIMG_KAFKA_SASL_PASSWORD",
    "ssl_password": "MEDIMG_KAFKA_SSL_KEY_PASSWORD",
}


class KafkaConfigError(ValueError):
    """Settings that cannot work; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "medimg"
    # (variable, Secret Manager version name) pairs: names, never values.
    secret_manager: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise KafkaConfigError(f"security protocol {self.security_protocol!r} is not one of "
                                   f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.sasl_mechanism and self.sasl_mechanism not in SASL_MECHANISMS:
            raise KafkaConfigError(f"SASL mechanism {self.sasl_mechanism!r} is not one of "
                                   f"{', '.join(SASL_MECHANISMS)}")
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise KafkaConfigError(f"{self.security_protocol} needs --kafka_sasl_mechanism")

    def client_kwargs(self, environ=None) -> dict:
        """Settings for any kafka-python client, secrets resolved here and now."""
        environ = os.environ if environ is None else environ
        settings = {"bootstrap_servers": self.bootstrap_servers.split(","),
                    "security_protocol": self.security_protocol,
                    "client_id": self.client_id}
        if self.sasl_mechanism:
            settings["sasl_mechanism"] = self.sasl_mechanism
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                settings[name] = getattr(self, name)
        for setting, variable in _SECRETS.items():
            try:
                value = read_secret(variable, environ, dict(self.secret_manager))
            except SecretUnreadable as error:
                raise KafkaConfigError(str(error)) from None
            if value is not None:
                settings[setting] = value
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism in (
                "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            missing = [_SECRETS[s] for s in ("sasl_plain_username", "sasl_plain_password")
                       if s not in settings]
            if missing:
                raise KafkaConfigError(
                    f"SASL {self.sasl_mechanism} needs credentials: set {' and '.join(missing)} "
                    "(or the same names with _FILE pointing at a file) in the job's environment")
        return settings

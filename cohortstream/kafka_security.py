"""How every Kafka client of the project authenticates and encrypts: built once from settings.

The faust app, the event publisher, the admin and offset readers, the CLI and the
benchmarks all take their connection security from here: aiokafka clients from
:func:`aiokafka_security`, faust from :func:`kafka_security` (``streams/app.py``), the
DICOM listener's librdkafka producer from :func:`librdkafka_config`. So no client can be
left on plaintext by accident when the deployment turns ``SASL_SSL`` on.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from cohortstream.settings import Settings
from cohortstream.tls import client_context

__all__ = ["KafkaSecurity", "aiokafka_security", "kafka_security", "librdkafka_config"]


@dataclass(frozen=True, repr=False)
class KafkaSecurity:
    """The connection security of one process's Kafka clients (``repr`` shows no password)."""

    protocol: str
    ssl_context: ssl.SSLContext | None
    sasl_mechanism: str | None
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        return f"KafkaSecurity(protocol={self.protocol!r}, mechanism={self.sasl_mechanism!r}, user={self.username!r})"


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The security settings of ``settings`` with the TLS context built (CA, optional client certificate)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return KafkaSecurity(protocol, None, None, None, None)
    context = client_context(
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
        check_hostname=settings.kafka_ssl_check_hostname,
    )
    if protocol == "SSL":
        return KafkaSecurity(protocol, context, None, None, None)
    return KafkaSecurity(
        protocol,
        context,
        settings.kafka_sasl_mechanism,
        settings.kafka_sasl_username,
        settings.kafka_sasl_password.get_secret_value(),
    )


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
    security = kafka_security(settings)
    kwargs: dict[str, Any] = {"security_protocol": security.protocol}
    if security.ssl_context is not None:
        kwargs["ssl_context"] = security.ssl_context
    if security.sasl_mechanism is not None:
        kwargs["sasl_mechanism"] = security.sasl_mechanism
        kwargs["sasl_plain_username"] = security.username
        kwargs["sasl_plain_password"] = security.password
    return kwargs


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """The same security as configuration properties of a librdkafka client
    (:mod:`cohortstream.threaded_publisher`): the files by path, as librdkafka reads them."""
    security = kafka_security(settings)
    config: dict[str, Any] = {"security.protocol": security.protocol}
    if security.protocol == "PLAINTEXT":
        return config
    config["ssl.ca.location"] = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else "probe"
    if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
        config["ssl.certificate.location"] = str(settings.kafka_ssl_certfile)
        config["ssl.key.location"] = str(settings.kafka_ssl_keyfile)
    config["ssl.endpoint.identification.algorithm"] = "https" if settings.kafka_ssl_check_hostname else "none"
    if security.sasl_mechanism is not None:
        config["sasl.mechanism"] = security.sasl_mechanism
        config["sasl.username"] = security.username
        config["sasl.password"] = security.password
    return config

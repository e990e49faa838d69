"""TLS contexts built from settings: one place decides protocol versions and verification.

Clients (Kafka) verify the server against a CA file and its host name; servers (the
DICOM listener) present a certificate and, when given a CA file, require and verify
the caller's (mutual TLS, as IHE ATNA's secure node asks). TLS 1.2 is the floor
(BCP 195); older versions are refused on both sides.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cohortstream.errors import ConfigurationError

__all__ = ["client_context", "server_context"]


def client_context(
    cafile: Path | None, certfile: Path | None = None, keyfile: Path | None = None, *, check_hostname: bool = True
) -> ssl.SSLContext:
    """A client context that trusts ``cafile`` (or the system's CAs) and optionally presents a certificate."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
        if certfile is not None:
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load TLS files (CA {cafile}, certificate {certfile}, key {keyfile}): {exc}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    return context


def server_context(certfile: Path, keyfile: Path, cafile: Path | None = None) -> ssl.SSLContext:
    """A server context presenting ``certfile``; with ``cafile``, callers must present a certificate it signed."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certfile), str(keyfile))
        if cafile is not None:
            context.load_verify_locations(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load TLS files (certificate {certfile}, key {keyfile}, CA {cafile}): {exc}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if cafile is not None else ssl.CERT_NONE
    return context

"""The project's exception hierarchy.

Every error the project raises on purpose derives from :class:`CohortStreamError`, so
callers (the CLI, agents deciding between retry and dead-letter) can tell our failures
from library bugs. Subclasses also inherit the matching builtin where one fits, so code
written against ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BadMarkerError",
    "CohortStreamError",
    "ConfigurationError",
    "EventDecodeError",
    "EventEncodeError",
    "SchemaCompatibilityError",
    "SchemaError",
    "TrailingBytesError",
    "TruncatedMessageError",
    "UnknownFingerprintError",
]


class CohortStreamError(Exception):
    """Base class of every error raised on purpose by cohortstream."""


class ConfigurationError(CohortStreamError, ValueError):
    """A setting is missing or inconsistent; the message names the setting."""


class SchemaError(CohortStreamError, ValueError):
    """An Avro schema file is unreadable, invalid or duplicated; the message names the file."""


class SchemaCompatibilityError(SchemaError):
    """A newer schema version cannot read data written with an older one."""


class EventEncodeError(CohortStreamError, ValueError):
    """An event does not conform to its schema; the message names the schema and the field."""


class EventDecodeError(CohortStreamError, ValueError):
    """Bytes could not be decoded into an event. Such messages go to the dead-letter topic."""


class BadMarkerError(EventDecodeError):
    """The message does not start with the Avro single-object marker 0xC3 0x01."""


class TruncatedMessageError(EventDecodeError):
    """The message ends before its header or its Avro body is complete."""


class UnknownFingerprintError(EventDecodeError):
    """The writer-schema fingerprint in the header matches no schema this build knows."""


class TrailingBytesError(EventDecodeError):
    """The Avro body was decoded but bytes remain after it: the message is not one event."""

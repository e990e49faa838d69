"""Errors of the REDCap edge, each mapped to one HTTP answer by the webhook.

They derive from :class:`~cohortstream.errors.CohortStreamError` so the CLI and callers can
tell our failures from library bugs. Messages name projects, records, instruments and
fields, never a value of a record (patient data).
"""

from __future__ import annotations

from collections.abc import Sequence

from cohortstream.errors import CohortStreamError

__all__ = [
    "RedcapApiError",
    "RedcapError",
    "RedcapPermanentApiError",
    "RedcapTransientApiError",
    "TriggerInvalid",
    "TriggerRejected",
]


class RedcapError(CohortStreamError):
    """Base class of every error of the REDCap producer."""


class TriggerInvalid(RedcapError, ValueError):
    """A Data Entry Trigger body lacks required fields or has malformed ones (HTTP 400).

    ``missing`` and ``invalid`` hold field names only, so the answer can name them.
    """

    def __init__(self, missing: Sequence[str] = (), invalid: Sequence[str] = ()) -> None:
        self.missing = tuple(missing)
        self.invalid = tuple(invalid)
        parts = []
        if self.missing:
            parts.append(f"missing required field(s): {', '.join(self.missing)}")
        if self.invalid:
            parts.append(f"invalid field(s): {', '.join(self.invalid)}")
        super().__init__("; ".join(parts) or "invalid Data Entry Trigger")


class TriggerRejected(RedcapError, PermissionError):
    """A trigger from a caller, server or project we do not trust (HTTP 403).

    ``reason`` is logged; the client only learns that it was refused.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"trigger rejected: {reason}")


class RedcapApiError(RedcapError):
    """The REDCap API answered with an error or could not be reached.

    ``status`` is the HTTP status (None when no answer came); ``transient`` says whether
    asking again later may succeed (connection errors, timeouts, 5xx).
    """

    transient: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RedcapTransientApiError(RedcapApiError):
    """Connection error, timeout or 5xx: retried with backoff, then reported as 503."""

    transient = True


class RedcapPermanentApiError(RedcapApiError):
    """A 4xx or an ``{"error": ...}`` answer (bad token, unknown form): retrying cannot help."""

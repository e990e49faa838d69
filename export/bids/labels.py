"""Pseudonymous subject labels and date shifts, keyed so that they are stable.

Why keyed: a plain hash of a subject id can be recomputed by anyone holding the
registry; HMAC-SHA256 with a secret key (``bids_pseudonym_key``, kept outside the
export) gives the same label in every export made with that key and reveals nothing
without it. The key also drives the per-subject date jitter, so shifted dates cannot be
undone by knowing the fixed shift alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import date, datetime, timedelta

from cohortstream.errors import ConfigurationError

__all__ = ["DateShifter", "bids_label", "pseudonym"]

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def pseudonym(key: bytes, subject_id: str, length: int = 10) -> str:
    """Keyed, stable label: base32 of HMAC-SHA256(key, subject id), lower case, ``length`` chars.

    Always starts with a letter so that spreadsheet tools never read it as a number."""
    if not key:
        raise ConfigurationError("COHORTSTREAM_BIDS_PSEUDONYM_KEY is empty: pseudonymous labels need a secret key")
    digest = hmac.new(key, subject_id.encode("utf-8"), hashlib.sha256).digest()
    text = base64.b32encode(digest).decode("ascii").lower().rstrip("=")
    return "p" + text[: length - 1]


def bids_label(text: str) -> str:
    """A BIDS label (alphanumeric only) from free text; empty text is an error."""
    label = _NOT_ALNUM.sub("", text)
    if not label:
        raise ValueError(f"{text!r} has no letters or digits to make a BIDS label from")
    return label


class DateShifter:
    """Moves a subject's dates back by ``years`` plus a keyed 0-364 day jitter.

    Intervals within a subject are kept (same offset for every date of the subject); BIDS
    recommends shifted dates to land in 1925 or earlier, which the default 150 years does
    for any date before 2075."""

    def __init__(self, key: bytes, years: int) -> None:
        self._key = key
        self._years = years

    def offset(self, subject_id: str) -> timedelta:
        if self._years == 0:
            return timedelta(0)
        digest = hmac.new(self._key, b"date-shift|" + subject_id.encode("utf-8"), hashlib.sha256).digest()
        return timedelta(days=round(self._years * 365.25) + int.from_bytes(digest[:4], "big") % 365)

    def shift_datetime(self, subject_id: str, value: datetime) -> datetime:
        return value - self.offset(subject_id)

    def shift_date(self, subject_id: str, value: date) -> date:
        return value - self.offset(subject_id)

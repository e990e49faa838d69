"""What every EHR parser shares: the outcome types, row errors and value parsing.

Parsers are pure: they read a file and yield :class:`~cohortstream.events.EhrRecord`,
:class:`BadRow` or :class:`Skipped`, never touching Kafka, so they are unit-tested on
files alone and the loader decides what to publish. A bad row is an outcome, not an
exception: it carries its file, line and reason so it can be dead-lettered and reported
(design decision 7: poison never blocks, and nothing is silently dropped).
"""

from __future__ import annotations

import csv
import gzip
import io
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from cohortstream.errors import CohortStreamError
from cohortstream.events import DeadLetter, FailureStage

__all__ = [
    "EHR_EVENT_NAMESPACE",
    "PRODUCER",
    "BadRow",
    "CsvRow",
    "EhrFileError",
    "MissingColumnError",
    "RowError",
    "Skipped",
    "deterministic_event_id",
    "iter_csv",
    "open_text",
    "optional_float",
    "optional_int",
    "optional_mimic_time",
    "parse_fhir_datetime",
    "parse_mimic_time",
    "required_int",
    "required_text",
]

PRODUCER = "ehr-loader"

#: Namespace of the uuid5 event ids: a replayed row gets the event_id it had the first time.
EHR_EVENT_NAMESPACE = uuid.UUID("6f0c5a8e-3b1d-5c2e-9a47-1d2b3c4d5e6f")


def deterministic_event_id(source: str, kind: str, row_id: str) -> uuid.UUID:
    """``uuid5(source/kind/row_id)``: the same row loaded twice yields the same event id,
    so a consumer (or a person reading the topic) recognises a replay."""
    return uuid.uuid5(EHR_EVENT_NAMESPACE, f"{source}/{kind}/{row_id}")


class EhrFileError(CohortStreamError, ValueError):
    """A whole file cannot be loaded (unreadable, not CSV/JSON, wrong shape); the message
    names the file. The loader reports it and goes on with the other files."""


class MissingColumnError(EhrFileError):
    """A CSV table lacks a column its parser needs; the message names file and column."""

    def __init__(self, file: str, table: str, columns: Sequence[str], header: bytes) -> None:
        self.file = file
        self.table = table
        self.columns = tuple(columns)
        self.header = header
        super().__init__(f"{file}: table {table} lacks required column(s) {', '.join(self.columns)}")


class RowError(CohortStreamError, ValueError):
    """One row is invalid. ``reason`` names the column and the problem but never the
    value, so it can go to logs and terminals (the raw row travels in the dead letter)."""

    def __init__(self, reason: str, error_type: str = "InvalidValue") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


@dataclass(frozen=True)
class BadRow:
    """A row (CSV line or FHIR resource) that failed validation."""

    source: str
    source_file: str
    location: str
    """``file:line`` (1-based, header is line 1) or ``file#entry[i]``."""
    kind: str
    """Table name or FHIR resource type (``"?"`` when unknown)."""
    error_type: str
    reason: str
    raw: bytes
    key: str | None = None
    """``source/subject_id`` when the row's subject could be read, else None."""

    def to_dead_letter(self) -> DeadLetter:
        """The DeadLetter event for this row (its id, too, is deterministic)."""
        return DeadLetter(
            event_id=deterministic_event_id(self.source, "dead-letter", self.location),
            producer=PRODUCER,
            source_location=self.location,
            key=self.key.encode("utf-8") if self.key is not None else None,
            value=self.raw,
            stage=FailureStage.VALIDATE,
            error_type=self.error_type,
            reason=self.reason,
            attempts=0,
        )

    @property
    def message_key(self) -> str:
        """Kafka key of the dead letter: the row's key, else its location."""
        return self.key if self.key is not None else self.location


@dataclass(frozen=True)
class Skipped:
    """A FHIR resource of a type the loader does not map (counted, not dead-lettered)."""

    location: str
    kind: str


@dataclass(frozen=True)
class CsvRow:
    """One CSV record with where it came from."""

    line: int
    values: dict[str, str] | None
    """Column → text; None when the field count does not match the header."""
    raw: bytes
    field_count: int


def open_text(path: Path) -> IO[str]:
    """Open a UTF-8 text file, transparently gunzipping ``*.gz`` (MIMIC ships ``.csv.gz``)."""
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def iter_csv(path: Path, rel: str, table: str, required: Sequence[str]) -> Iterator[CsvRow | list[str]]:
    """Yield the header (a list, first) and then each record with its 1-based start line
    and its raw text, so a bad row can be dead-lettered exactly as it was in the file.

    Raises :class:`MissingColumnError` (before any row) when a required column is absent
    and :class:`EhrFileError` when the file cannot be read as UTF-8 CSV.
    """
    consumed: list[str] = []

    def lines(handle: IO[str]) -> Iterator[str]:
        for text in handle:
            consumed.append(text)
            yield text

    try:
        with open_text(path) as handle:
            reader = csv.reader(lines(handle))
            try:
                header = next(reader)
            except StopIteration:
                raise EhrFileError(f"{rel}: empty file, expected a CSV header") from None
            header_raw = "".join(consumed).encode("utf-8")
            missing = [column for column in required if column not in header]
            if missing:
                raise MissingColumnError(rel, table, missing, header_raw)
            yield header
            line = 1 + len(consumed)
            consumed.clear()
            width = len(header)
            for fields in reader:
                raw = "".join(consumed)
                consumed.clear()
                start = line
                line += raw.count("\n") or 1
                if not fields:  # blank line
                    continue
                values = dict(zip(header, fields, strict=True)) if len(fields) == width else None
                yield CsvRow(start, values, raw.encode("utf-8"), len(fields))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise EhrFileError(f"{rel}: cannot read as UTF-8 CSV: {type(exc).__name__}: {exc}") from exc


def required_text(row: dict[str, str], column: str) -> str:
    """The non-empty text of ``column``."""
    value = row.get(column, "").strip()
    if not value:
        raise RowError(f"column {column}: empty", "MissingValue")
    return value


def required_int(row: dict[str, str], column: str) -> int:
    """``column`` as an integer (MIMIC ids, ages, years)."""
    text = required_text(row, column)
    try:
        return int(text)
    except ValueError:
        raise RowError(f"column {column}: not an integer") from None


def optional_int(row: dict[str, str], column: str) -> int | None:
    """``column`` as an integer, None when empty or absent."""
    if not row.get(column, "").strip():
        return None
    return required_int(row, column)


def optional_float(row: dict[str, str], column: str) -> float | None:
    """``column`` as a finite number, None when empty or absent."""
    text = row.get(column, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RowError(f"column {column}: not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise RowError(f"column {column}: not a finite number")
    return value


_MIMIC_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def _mimic_time(text: str, column: str) -> datetime:
    for fmt in _MIMIC_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise RowError(f"column {column}: not a time (expected YYYY-MM-DD[ HH:MM:SS])")


def parse_mimic_time(row: dict[str, str], column: str) -> datetime:
    """A MIMIC time as an aware UTC datetime.

    MIMIC-IV times are naive, date-shifted local times with no zone to convert from; we
    label them UTC so they order correctly and round-trip through Avro
    ``timestamp-millis`` unchanged. The wall-clock value is kept exactly; do not read
    them as real UTC instants.
    """
    return _mimic_time(required_text(row, column), column)


def optional_mimic_time(row: dict[str, str], column: str) -> datetime | None:
    """:func:`parse_mimic_time`, None when empty or absent."""
    text = row.get(column, "").strip()
    return _mimic_time(text, column) if text else None


def parse_fhir_datetime(value: object, field: str) -> datetime:
    """A FHIR ``date``/``dateTime``/``instant`` as an aware UTC datetime.

    Partial dates (``2020``, ``2020-05``, ``2020-05-17``) mean the start of that period
    in UTC; a time must carry a zone, as FHIR requires (a zoneless time is rejected
    rather than guessed).
    """
    if not isinstance(value, str) or not value:
        raise RowError(f"{field}: not a FHIR dateTime", "InvalidValue")
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        if len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RowError(f"{field}: not a FHIR dateTime") from None
    if parsed.tzinfo is None:
        raise RowError(f"{field}: dateTime with a time but no zone")
    return parsed.astimezone(UTC)

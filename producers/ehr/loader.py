"""Load an EHR extract (a file or a directory) as events: parse, publish, report.

The parsers (``mimic``, ``fhir``) are pure; this module finds the files, loads the
MIMIC dictionary tables first, sends EhrRecords and DeadLetters in batches through a
:class:`Sink` (the Kafka :class:`~cohortstream.publisher.EventPublisher` in production,
a list in unit tests) and counts everything per file. A bad row or a bad file is
reported and dead-lettered, never fatal; only a publish failure stops the load.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from cohortstream.events import DeadLetter, EhrRecord, Event, FailureStage
from cohortstream.settings import Settings
from producers.ehr import fhir, mimic
from producers.ehr.rows import (
    PRODUCER,
    BadRow,
    EhrFileError,
    MissingColumnError,
    Skipped,
    deterministic_event_id,
)

__all__ = ["FileReport", "LoadReport", "Sink", "discover", "load_extract", "publish_extract"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Order in which MIMIC event tables are loaded (patients before their facts).
_TABLE_ORDER = ("patients", "admissions", "labevents", "diagnoses_icd")


class Sink(Protocol):
    """Where events go; :class:`~cohortstream.publisher.EventPublisher` is one."""

    async def publish_many(self, items: Sequence[tuple[Event, str]]) -> object: ...


@dataclass
class FileReport:
    """What happened to one file."""

    file: str
    kind: str
    """MIMIC table name, or ``fhir``."""
    rows_read: int = 0
    published: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    error: str | None = None
    """File-level failure (missing column, unreadable); rows after it were not read."""
    bad_rows: list[BadRow] = field(default_factory=list)


@dataclass
class LoadReport:
    """Every file's report plus what was not loaded at all."""

    files: list[FileReport] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """Files under PATH that are neither a known MIMIC table nor FHIR JSON."""

    def totals(self) -> FileReport:
        """All files summed up."""
        total = FileReport(file="TOTAL", kind="")
        for report in self.files:
            total.rows_read += report.rows_read
            total.published += report.published
            total.dead_lettered += report.dead_lettered
            total.skipped += report.skipped
        return total

    def by_kind(self) -> dict[str, FileReport]:
        """Counts per table (FHIR files together under ``fhir``)."""
        kinds: dict[str, FileReport] = {}
        for report in self.files:
            row = kinds.setdefault(report.kind, FileReport(file="", kind=report.kind))
            row.rows_read += report.rows_read
            row.published += report.published
            row.dead_lettered += report.dead_lettered
            row.skipped += report.skipped
        return kinds

    def summary(self) -> str:
        """A table for people: per file, per table and in total."""
        head = f"{'file':<40} {'table':<16} {'read':>9} {'published':>9} {'dead-lettered':>13} {'skipped':>7}"
        lines = [head]

        def line(name: str, r: FileReport) -> str:
            return f"{name:<40} {r.kind:<16} {r.rows_read:>9} {r.published:>9} {r.dead_lettered:>13} {r.skipped:>7}"

        lines += [line(r.file, r) for r in self.files]
        lines.append("per table:")
        lines += [line("", r) for r in self.by_kind().values()]
        lines.append(line("TOTAL", self.totals()))
        lines += [f"FILE FAILED {r.file}: {r.error}" for r in self.files if r.error]
        lines += [f"ignored {name}: not a known MIMIC table or FHIR JSON" for name in self.ignored]
        return "\n".join(lines)


def discover(root: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]], list[Path]]:
    """Split the files under ``root`` (or ``root`` itself) into MIMIC tables, FHIR JSON
    files and the rest. MIMIC entries are ``(table, path)``; FHIR ones ``("fhir", path)``."""
    if root.is_dir():
        candidates = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif root.is_file():
        candidates = [root]
    else:
        raise EhrFileError(f"{root}: no such file or directory")
    tables: list[tuple[str, Path]] = []
    bundles: list[tuple[str, Path]] = []
    ignored: list[Path] = []
    for path in candidates:
        table = mimic.table_name(path)
        if table is not None:
            tables.append((table, path))
        elif path.name.endswith((".json", ".json.gz")):
            bundles.append(("fhir", path))
        else:
            ignored.append(path)
    return tables, bundles, ignored


def _relative(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def _dictionary_paths(tables: list[tuple[str, Path]], root: Path) -> dict[str, Path]:
    """Dictionary tables under PATH, or next to a single table file given as PATH."""
    found = {table: path for table, path in tables if table in mimic.DICTIONARY_TABLES}
    if root.is_file():
        for table in mimic.DICTIONARY_TABLES:
            for suffix in (".csv", ".csv.gz"):
                sibling = root.parent / f"{table}{suffix}"
                if table not in found and sibling.is_file():
                    found[table] = sibling
    return found


def _file_dead_letter(source: str, report: FileReport, error: EhrFileError) -> tuple[DeadLetter, str]:
    """A whole file that could not be loaded is dead-lettered once, so the topic (not
    only the terminal) shows it; for a missing column the value is the header line."""
    letter = DeadLetter(
        event_id=deterministic_event_id(source, "dead-letter", report.file),
        producer=PRODUCER,
        source_location=report.file,
        value=error.header if isinstance(error, MissingColumnError) else None,
        stage=FailureStage.VALIDATE,
        error_type=type(error).__name__,
        reason=str(error),
        attempts=0,
    )
    return letter, report.file


class _Progress:
    """tqdm bars on stderr showing rows/s (one per MIMIC table, one for all FHIR files),
    or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextmanager
    def bar(self, name: str) -> Iterator[Callable[[Iterable[_T]], Iterator[_T]]]:
        if not self.enabled:
            yield iter
            return
        from tqdm import tqdm

        with tqdm(desc=name, unit=" rows", unit_scale=True, file=sys.stderr, mininterval=0.5) as counter:

            def wrap(items: Iterable[_T]) -> Iterator[_T]:
                for item in items:
                    counter.update(1)
                    yield item

            yield wrap


async def _load_file(
    outcomes: Iterable[EhrRecord | BadRow | Skipped], report: FileReport, sink: Sink, batch_size: int
) -> None:
    batch: list[tuple[Event, str]] = []
    pending_records = 0
    pending_bad: list[BadRow] = []

    async def flush() -> None:
        nonlocal pending_records
        if batch:
            await sink.publish_many(batch)
        report.published += pending_records
        report.dead_lettered += len(pending_bad)
        report.bad_rows.extend(pending_bad)
        batch.clear()
        pending_records = 0
        pending_bad.clear()

    for outcome in outcomes:
        report.rows_read += 1
        if isinstance(outcome, EhrRecord):
            batch.append((outcome, f"{outcome.source}/{outcome.subject_id}"))
            pending_records += 1
        elif isinstance(outcome, BadRow):
            batch.append((outcome.to_dead_letter(), outcome.message_key))
            pending_bad.append(outcome)
            log.warning(
                "EHR row dead-lettered",
                extra={"location": outcome.location, "error_type": outcome.error_type, "reason": outcome.reason},
            )
        else:
            report.skipped += 1
        if len(batch) >= batch_size:
            await flush()
    await flush()


async def _run(
    report: FileReport, outcomes: Iterable[EhrRecord | BadRow | Skipped], sink: Sink, source: str, batch_size: int
) -> None:
    try:
        await _load_file(outcomes, report, sink, batch_size)
    except EhrFileError as error:
        report.error = str(error)
        log.error("EHR file not loaded", extra={"file": report.file, "reason": str(error)})
        await sink.publish_many([_file_dead_letter(source, report, error)])
        report.dead_lettered += 1


async def load_extract(
    root: Path,
    sink: Sink,
    *,
    source: str | None = None,
    progress: bool = False,
    batch_size: int = 1000,
) -> LoadReport:
    """Load every MIMIC table and FHIR file under ``root``; return what happened.

    ``source`` overrides the per-format defaults (``mimic-iv``, ``fhir``). Raises
    :class:`~cohortstream.publisher.PublishError` (from the sink) if Kafka fails, and
    :class:`EhrFileError` if ``root`` does not exist; everything else is in the report.
    """
    tables, bundles, ignored = discover(root)
    report = LoadReport(ignored=[_relative(p, root) for p in ignored])
    bar = _Progress(progress)
    mimic_source = source or mimic.DEFAULT_SOURCE
    lookups = mimic.Lookups()
    dictionaries = _dictionary_paths(tables, root)
    for table, path in dictionaries.items():
        rel = _relative(path, root) if path.is_relative_to(root) else path.name
        file_report = FileReport(file=rel, kind=table)
        report.files.append(file_report)

        def read(table: str = table, path: Path = path, rel: str = rel) -> Iterator[BadRow]:
            if table == "d_labitems":
                lookups.labitems, bad = mimic.read_labitems(path, rel, mimic_source)
            else:
                lookups.icd_titles, bad = mimic.read_icd_titles(path, rel, mimic_source)
            yield from bad

        await _run(file_report, read(), sink, mimic_source, batch_size)
        # Dictionary rows are lookups, not events: count the good ones as read only.
        file_report.rows_read += len(lookups.labitems or {}) if table == "d_labitems" else len(lookups.icd_titles)
    order = {name: i for i, name in enumerate(_TABLE_ORDER)}
    for table, path in sorted(
        ((t, p) for t, p in tables if t in mimic.EVENT_TABLES), key=lambda tp: (order[tp[0]], str(tp[1]))
    ):
        rel = _relative(path, root)
        file_report = FileReport(file=rel, kind=table)
        report.files.append(file_report)
        with bar.bar(rel) as wrap:
            outcomes = wrap(mimic.parse_table(table, path, rel, mimic_source, lookups))
            await _run(file_report, outcomes, sink, mimic_source, batch_size)
        log.info("EHR file loaded", extra={"file": rel, "rows": file_report.rows_read, "error": file_report.error})
    fhir_source = source or fhir.DEFAULT_SOURCE
    if bundles:
        with bar.bar(f"FHIR ({len(bundles)} files)") as wrap:
            for _, path in bundles:
                rel = _relative(path, root)
                file_report = FileReport(file=rel, kind="fhir")
                report.files.append(file_report)
                await _run(file_report, wrap(fhir.parse_bundle(path, rel, fhir_source)), sink, fhir_source, batch_size)
    return report


async def publish_extract(
    settings: Settings, root: Path, *, source: str | None = None, progress: bool = False, batch_size: int = 1000
) -> LoadReport:
    """:func:`load_extract` into Kafka through an ``acks=all`` :class:`EventPublisher`."""
    from cohortstream.publisher import EventPublisher

    async with EventPublisher(settings) as publisher:
        return await load_extract(root, publisher, source=source, progress=progress, batch_size=batch_size)

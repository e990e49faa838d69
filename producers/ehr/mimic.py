"""MIMIC-IV ``hosp`` tables (CSV or ``.csv.gz``) → EhrRecord / BadRow.

One :class:`TableSpec` per event table says which columns are required, what the
natural row id is and how a row maps to an event; the dictionary tables
(``d_labitems``, ``d_icd_diagnoses``) are read first into :class:`Lookups` so lab rows
get their label (and unknown item ids are caught) and diagnoses their long title.

All MIMIC times are naive and date-shifted; they are labelled UTC unchanged (see
:func:`producers.ehr.rows.parse_mimic_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cohortstream.events import EhrRecord, EhrRecordType
from producers.ehr.rows import (
    PRODUCER,
    BadRow,
    CsvRow,
    EhrFileError,
    RowError,
    deterministic_event_id,
    iter_csv,
    optional_float,
    optional_int,
    optional_mimic_time,
    parse_mimic_time,
    required_int,
    required_text,
)

__all__ = [
    "DEFAULT_SOURCE",
    "DICTIONARY_TABLES",
    "EVENT_TABLES",
    "LABITEM_CODE_SYSTEM",
    "Lookups",
    "TableSpec",
    "parse_table",
    "read_icd_titles",
    "read_labitems",
    "table_name",
]

DEFAULT_SOURCE = "mimic-iv"
LABITEM_CODE_SYSTEM = "mimic-iv-itemid"
ICD_SYSTEMS = {9: "ICD-9-CM", 10: "ICD-10-CM"}


@dataclass
class Lookups:
    """Dictionary tables joined into event rows."""

    labitems: dict[int, str] | None = None
    """itemid → label; None when no d_labitems was found (labevents cannot be checked)."""
    icd_titles: dict[tuple[int, str], str] = field(default_factory=dict)
    """(icd_version, icd_code) → long_title; optional."""


@dataclass(frozen=True)
class TableSpec:
    """How one MIMIC table becomes events."""

    name: str
    required: tuple[str, ...]
    row_id: Callable[[dict[str, str]], str]
    build: Callable[[dict[str, str], str, str, str, Lookups], EhrRecord]
    """(row, source, source_file, row_id, lookups) → event; raises RowError."""


def _attrs(row: dict[str, str], columns: tuple[str, ...]) -> dict[str, str]:
    return {c: row[c].strip() for c in columns if row.get(c, "").strip()}


def _record(row: dict[str, str], table: str, source: str, rel: str, row_id: str, **fields: object) -> EhrRecord:
    return EhrRecord(
        event_id=deterministic_event_id(source, table, row_id),
        producer=PRODUCER,
        source=source,
        source_file=rel,
        source_row_id=row_id,
        subject_id=str(required_int(row, "subject_id")),
        **fields,  # type: ignore[arg-type]
    )


def _patient(row: dict[str, str], source: str, rel: str, row_id: str, lookups: Lookups) -> EhrRecord:
    required_text(row, "gender")
    required_int(row, "anchor_age")
    required_int(row, "anchor_year")
    optional_mimic_time(row, "dod")
    return _record(
        row,
        "patients",
        source,
        rel,
        row_id,
        record_type=EhrRecordType.PATIENT,
        attributes=_attrs(row, ("gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")),
    )


def _admission(row: dict[str, str], source: str, rel: str, row_id: str, lookups: Lookups) -> EhrRecord:
    admitted = parse_mimic_time(row, "admittime")
    optional_mimic_time(row, "dischtime")
    optional_mimic_time(row, "deathtime")
    return _record(
        row,
        "admissions",
        source,
        rel,
        row_id,
        record_type=EhrRecordType.ADMISSION,
        effective_at=admitted,
        code_system="mimic-iv-admission-type" if row.get("admission_type", "").strip() else None,
        code=row.get("admission_type", "").strip() or None,
        attributes=_attrs(
            row,
            (
                "hadm_id",
                "dischtime",
                "deathtime",
                "admission_type",
                "admission_location",
                "discharge_location",
                "insurance",
                "language",
                "marital_status",
                "race",
                "hospital_expire_flag",
            ),
        ),
    )


def _lab(row: dict[str, str], source: str, rel: str, row_id: str, lookups: Lookups) -> EhrRecord:
    itemid = required_int(row, "itemid")
    assert lookups.labitems is not None  # parse_table refuses labevents without d_labitems
    label = lookups.labitems.get(itemid)
    if label is None:
        raise RowError(f"column itemid: {itemid} is not in d_labitems", "UnknownCode")
    optional_int(row, "hadm_id")
    charted = parse_mimic_time(row, "charttime")
    optional_mimic_time(row, "storetime")
    number = optional_float(row, "valuenum")
    optional_float(row, "ref_range_lower")
    optional_float(row, "ref_range_upper")
    text = row.get("value", "").strip() or None
    return _record(
        row,
        "labevents",
        source,
        rel,
        row_id,
        record_type=EhrRecordType.LAB,
        effective_at=charted,
        code_system=LABITEM_CODE_SYSTEM,
        code=str(itemid),
        display=label,
        value_number=number,
        value_text=text if number is None else None,
        unit=row.get("valueuom", "").strip() or None,
        attributes=_attrs(
            row,
            (
                "hadm_id",
                "specimen_id",
                "storetime",
                "flag",
                "ref_range_lower",
                "ref_range_upper",
                "priority",
            ),
        ),
    )


def _diagnosis(row: dict[str, str], source: str, rel: str, row_id: str, lookups: Lookups) -> EhrRecord:
    version = required_int(row, "icd_version")
    if version not in ICD_SYSTEMS:
        raise RowError("column icd_version: expected 9 or 10", "UnknownCode")
    code = required_text(row, "icd_code")
    return _record(
        row,
        "diagnoses_icd",
        source,
        rel,
        row_id,
        record_type=EhrRecordType.DIAGNOSIS,
        code_system=ICD_SYSTEMS[version],
        code=code,
        display=lookups.icd_titles.get((version, code)),
        attributes=_attrs(row, ("hadm_id", "seq_num")),
    )


def _int_id(column: str) -> Callable[[dict[str, str]], str]:
    return lambda row: str(required_int(row, column))


EVENT_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("patients", ("subject_id", "gender", "anchor_age", "anchor_year"), _int_id("subject_id"), _patient),
        TableSpec("admissions", ("subject_id", "hadm_id", "admittime"), _int_id("hadm_id"), _admission),
        TableSpec(
            "labevents",
            ("labevent_id", "subject_id", "itemid", "charttime", "value", "valuenum", "valueuom"),
            _int_id("labevent_id"),
            _lab,
        ),
        TableSpec(
            "diagnoses_icd",
            ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"),
            lambda row: f"{required_int(row, 'hadm_id')}/{required_int(row, 'seq_num')}",
            _diagnosis,
        ),
    )
}

#: Dictionary tables and their required columns; loaded before the event tables.
DICTIONARY_TABLES: dict[str, tuple[str, ...]] = {
    "d_labitems": ("itemid", "label"),
    "d_icd_diagnoses": ("icd_code", "icd_version", "long_title"),
}


def table_name(path: Path) -> str | None:
    """The MIMIC table a file holds, from its name (``labevents.csv.gz`` → ``labevents``)."""
    name = path.name
    for suffix in (".csv.gz", ".csv"):
        if name.endswith(suffix):
            table = name[: -len(suffix)]
            return table if table in EVENT_TABLES or table in DICTIONARY_TABLES else None
    return None


def _subject_key(row: dict[str, str] | None, source: str) -> str | None:
    if row is None:
        return None
    text = row.get("subject_id", "").strip()
    return f"{source}/{int(text)}" if text.isdigit() else None


def _bad(csv_row: CsvRow, table: str, source: str, rel: str, error: RowError) -> BadRow:
    return BadRow(
        source=source,
        source_file=rel,
        location=f"{rel}:{csv_row.line}",
        kind=table,
        error_type=error.error_type,
        reason=f"{table}: {error.reason}",
        raw=csv_row.raw,
        key=_subject_key(csv_row.values, source),
    )


def _shape_error(csv_row: CsvRow, width: int) -> RowError:
    return RowError(f"expected {width} fields, got {csv_row.field_count}", "MalformedRow")


def parse_table(
    table: str, path: Path, rel: str, source: str = DEFAULT_SOURCE, lookups: Lookups | None = None
) -> Iterator[EhrRecord | BadRow]:
    """Parse one event table. Raises :class:`~producers.ehr.rows.EhrFileError` for a
    file-level problem (missing column, unreadable file, labevents without d_labitems)."""
    spec = EVENT_TABLES[table]
    lookups = lookups or Lookups()
    if table == "labevents" and lookups.labitems is None:
        raise EhrFileError(f"{rel}: labevents needs d_labitems (d_labitems.csv[.gz]) next to it or under PATH")
    rows = iter_csv(path, rel, table, spec.required)
    header = next(rows)
    assert isinstance(header, list)
    for csv_row in rows:
        assert isinstance(csv_row, CsvRow)
        try:
            if csv_row.values is None:
                raise _shape_error(csv_row, len(header))
            row_id = spec.row_id(csv_row.values)
            yield spec.build(csv_row.values, source, rel, row_id, lookups)
        except RowError as error:
            yield _bad(csv_row, table, source, rel, error)


def read_labitems(path: Path, rel: str, source: str = DEFAULT_SOURCE) -> tuple[dict[int, str], list[BadRow]]:
    """``d_labitems`` as itemid → label, with its bad rows."""
    items: dict[int, str] = {}
    bad: list[BadRow] = []
    rows = iter_csv(path, rel, "d_labitems", DICTIONARY_TABLES["d_labitems"])
    header = next(rows)
    for csv_row in rows:
        assert isinstance(csv_row, CsvRow) and isinstance(header, list)
        try:
            if csv_row.values is None:
                raise _shape_error(csv_row, len(header))
            items[required_int(csv_row.values, "itemid")] = required_text(csv_row.values, "label")
        except RowError as error:
            bad.append(_bad(csv_row, "d_labitems", source, rel, error))
    return items, bad


def read_icd_titles(
    path: Path, rel: str, source: str = DEFAULT_SOURCE
) -> tuple[dict[tuple[int, str], str], list[BadRow]]:
    """``d_icd_diagnoses`` as (version, code) → long title, with its bad rows."""
    titles: dict[tuple[int, str], str] = {}
    bad: list[BadRow] = []
    rows = iter_csv(path, rel, "d_icd_diagnoses", DICTIONARY_TABLES["d_icd_diagnoses"])
    header = next(rows)
    for csv_row in rows:
        assert isinstance(csv_row, CsvRow) and isinstance(header, list)
        try:
            if csv_row.values is None:
                raise _shape_error(csv_row, len(header))
            version = required_int(csv_row.values, "icd_version")
            titles[(version, required_text(csv_row.values, "icd_code"))] = required_text(csv_row.values, "long_title")
        except RowError as error:
            bad.append(_bad(csv_row, "d_icd_diagnoses", source, rel, error))
    return titles, bad

"""``phenotype/`` tables: one per REDCap instrument, the latest labs, the diagnoses.

Why the data dictionary when it can be had: column descriptions and levels belong in
the sidecar JSON, and only the dictionary knows every choice of a field. The views hold
the typed values and the labels of the choices that were picked; when a project's API
is not configured, levels are derived from those labels, and the sidecar says so.
What never goes out: the record id field, fields that link subjects (the link rules'
``redcap_field``), fields the dictionary flags as identifiers, the configured drop list,
and the REDCap record id itself (rows are keyed by the pseudonymous ``participant_id``).
Dates are shifted like every other date of the subject.

Free text is left out by default: a notes field, or a text field without a structured
validation (number, integer, date, time), as the dictionary says; without the dictionary,
any field with a text answer that is neither a number, a date nor a labelled choice.
People type names, addresses and phone numbers into such fields, and no scrubber finds
them reliably. The export report lists each field left out;
``COHORTSTREAM_BIDS_KEEP_FREE_TEXT=true`` keeps them, flagged in the sidecar
("free text: review before sharing").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Dictionary", "PhenotypeTable", "diagnosis_table", "instrument_tables", "labs_table"]

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_STRUCTURED_VALIDATIONS = ("date", "datetime", "time", "integer", "number")
FREE_TEXT_FLAG = " (free text: review before sharing)"
_NOT_COLUMN = re.compile(r"[^A-Za-z0-9_]+")
DateShift = Callable[[str, str], str]


@dataclass(frozen=True)
class Dictionary:
    """What the REDCap data dictionary says about the fields (empty when not read)."""

    labels: dict[str, str] = field(default_factory=dict)
    choices: dict[str, dict[str, str]] = field(default_factory=dict)
    identifiers: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()
    free_text: frozenset[str] = frozenset()
    """Notes fields, and text fields without a structured validation."""
    units: dict[str, str] = field(default_factory=dict)
    record_id_field: str | None = None

    @classmethod
    def from_metadata(cls, rows: Iterable[Mapping[str, str]]) -> Dictionary:
        from producers.redcap.dictionary import parse_choices

        rows = list(rows)
        return cls(
            labels={r["field_name"]: re.sub(r"<[^>]+>", "", r.get("field_label") or "").strip() for r in rows},
            choices={
                r["field_name"]: parse_choices(r.get("select_choices_or_calculations") or "")
                for r in rows
                if r.get("field_type") in ("radio", "dropdown", "checkbox")
            },
            identifiers=frozenset(r["field_name"] for r in rows if (r.get("identifier") or "").lower() == "y"),
            dates=frozenset(
                r["field_name"]
                for r in rows
                if (r.get("text_validation_type_or_show_slider_number") or "").startswith(("date", "datetime"))
            ),
            free_text=frozenset(
                r["field_name"]
                for r in rows
                if r.get("field_type") == "notes"
                or (
                    r.get("field_type") == "text"
                    and not (r.get("text_validation_type_or_show_slider_number") or "").startswith(
                        _STRUCTURED_VALIDATIONS
                    )
                    and r["field_name"] != rows[0]["field_name"]
                )
            ),
            units={r["field_name"]: r["field_note"] for r in rows if (r.get("field_note") or "").strip()},
            record_id_field=rows[0]["field_name"] if rows else None,
        )

    @property
    def known(self) -> bool:
        return bool(self.labels)


@dataclass
class PhenotypeTable:
    """One ``phenotype/<name>.tsv`` and its sidecar."""

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]
    sidecar: dict[str, Any]


def _column(name: str) -> str:
    return _NOT_COLUMN.sub("_", name).strip("_") or "field"


def _shift_text(shift: DateShift, subject_id: str, value: str) -> str:
    return shift(subject_id, value)


def instrument_tables(
    questionnaires: Sequence[tuple[str, str, dict[str, Any]]],
    dictionary: Dictionary,
    drop_fields: Iterable[str],
    shift: DateShift,
    *,
    keep_free_text: bool = False,
    warnings: list[str] | None = None,
) -> list[PhenotypeTable]:
    """``questionnaires``: (participant_id, subject_id, questionnaire view document).
    Free-text fields are left out (each one noted in ``warnings``) unless ``keep_free_text``."""
    dropped = set(drop_fields) | set(dictionary.identifiers)
    free_text = free_text_fields(questionnaires, dictionary) - dropped
    if keep_free_text:
        flagged = free_text
    else:
        flagged = set()
        dropped |= free_text
        if warnings is not None:
            warnings += [
                f"REDCap field {name!r} left out of phenotype/: free text (COHORTSTREAM_BIDS_KEEP_FREE_TEXT=true "
                "keeps it, flagged for review)"
                for name in sorted(free_text)
            ]
    if dictionary.record_id_field:
        dropped.add(dictionary.record_id_field)
    dropped.add("record_id")
    # BIDS indexes phenotype tables by participant_id alone: one table per instrument, or
    # per instrument, event and repeat instance when a participant has several rows.
    by_instrument: dict[str, dict[tuple[str, int], list[tuple[str, str, dict[str, Any]]]]] = {}
    for item in questionnaires:
        slot = (str(item[2].get("event_name") or ""), int(item[2].get("repeat_instance") or 1))
        by_instrument.setdefault(str(item[2]["instrument"]), {}).setdefault(slot, []).append(item)
    tables = []
    for instrument, slots in sorted(by_instrument.items()):
        for (event, instance), items in sorted(slots.items()):
            name = (
                instrument
                if len(slots) == 1
                else "_".join(
                    [instrument, *([event] if event else []), *([f"instance{instance}"] if instance > 1 else [])]
                )
            )
            tables.append(
                _instrument_table(
                    _column(name), instrument, _first_per_participant(items), dictionary, dropped, shift, flagged
                )
            )
    return tables


def free_text_fields(questionnaires: Sequence[tuple[str, str, dict[str, Any]]], dictionary: Dictionary) -> set[str]:
    """The fields of ``questionnaires`` that hold free text (see the module docstring)."""
    found = set(dictionary.free_text)
    for _, _, doc in questionnaires:
        labels = doc.get("labels") or {}
        for name, value in (doc.get("values") or {}).items():
            if name in dictionary.labels or name in labels or name.endswith("_complete"):
                continue  # the dictionary knows it (free_text says which), or a labelled choice
            if isinstance(value, str) and value.strip() and not _ISO_DATE.match(value) and not _NUMBER.match(value):
                found.add(name)
    return found


def _first_per_participant(items: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """One row per participant (a subject with records in two projects keeps the first by id)."""
    seen: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for item in sorted(items, key=lambda i: (i[0], str(i[2].get("_id")))):
        seen.setdefault(item[0], item)
    return list(seen.values())


def _instrument_table(
    table_name: str,
    instrument: str,
    items: list[tuple[str, str, dict[str, Any]]],
    dictionary: Dictionary,
    dropped: set[str],
    shift: DateShift,
    flagged: Set[str] = frozenset(),
) -> PhenotypeTable:
    fields: list[str] = []
    seen_labels: dict[str, dict[str, str]] = {}
    for _, _, doc in items:
        for name, value in (doc.get("values") or {}).items():
            if name in dropped or name.endswith("_complete"):
                continue
            if name not in fields:
                fields.append(name)
            label = (doc.get("labels") or {}).get(name)
            if label is not None and value is not None and not isinstance(value, list):
                seen_labels.setdefault(name, {})[_code(value)] = label
    rows = []
    for participant, subject_id, doc in sorted(
        items, key=lambda i: (i[0], str(i[2].get("event_name") or ""), int(i[2].get("repeat_instance") or 1))
    ):
        row: dict[str, Any] = {
            "participant_id": f"sub-{participant}",
            "redcap_event_name": doc.get("event_name"),
            "redcap_repeat_instance": int(doc.get("repeat_instance") or 1),
            "completion_status": doc.get("completion_status"),
        }
        for name in fields:
            value = (doc.get("values") or {}).get(name)
            if isinstance(value, bool):
                value = _code(value)
            elif isinstance(value, str) and (name in dictionary.dates or _ISO_DATE.match(value)):
                value = _shift_text(shift, subject_id, value)
            row[_column(name)] = value
        rows.append(row)
    sidecar: dict[str, Any] = {
        "MeasurementToolMetadata": {"Description": f"REDCap instrument {instrument}"},
        "participant_id": {"Description": "Pseudonymous participant label, as in participants.tsv."},
        "redcap_event_name": {"Description": "REDCap event (longitudinal projects); n/a otherwise."},
        "redcap_repeat_instance": {
            "Description": "Instance of a repeating instrument or event (1 when not repeating)."
        },
        "completion_status": {
            "Description": "REDCap form status.",
            "Levels": {"INCOMPLETE": "Incomplete", "UNVERIFIED": "Unverified", "COMPLETE": "Complete"},
        },
    }
    for name in fields:
        entry: dict[str, Any] = {"Description": dictionary.labels.get(name) or f"REDCap field {name}"}
        if dictionary.choices.get(name):
            entry["Levels"] = dict(dictionary.choices[name])
        elif name in seen_labels:
            entry["Levels"] = dict(sorted(seen_labels[name].items()))
            entry["Description"] += " (levels derived from the answers seen; the data dictionary was not read)"
        if name in dictionary.units:
            entry["Units"] = dictionary.units[name]
        if name in flagged:
            entry["Description"] += FREE_TEXT_FLAG
        if name in dictionary.dates or any(
            isinstance(r.get(_column(name)), str) and _ISO_DATE.match(r[_column(name)]) for r in rows
        ):
            entry["Description"] += " (date shifted per participant)"
        sidecar[_column(name)] = entry
    columns = ["participant_id", "redcap_event_name", "redcap_repeat_instance", "completion_status"]
    columns += [_column(n) for n in fields]
    return PhenotypeTable(table_name, columns, rows, sidecar)


def _code(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def labs_table(subjects: Sequence[tuple[str, dict[str, Any]]]) -> PhenotypeTable | None:
    """Latest value per lab code and participant (``ehr_subjects.latest_labs``); wide format."""
    codes: dict[str, dict[str, Any]] = {}
    rows = []
    for participant, doc in subjects:
        row: dict[str, Any] = {"participant_id": f"sub-{participant}"}
        for lab in (doc.get("latest_labs") or {}).values():
            column = "lab_" + _column(str(lab.get("code") or ""))
            codes.setdefault(column, lab)
            row[column] = lab.get("value") if lab.get("value") is not None else lab.get("value_text")
        rows.append(row)
    if not codes:
        return None
    sidecar: dict[str, Any] = {
        "MeasurementToolMetadata": {"Description": "Latest laboratory value per code from the EHR extracts"},
        "participant_id": {"Description": "Pseudonymous participant label, as in participants.tsv."},
    }
    for column, lab in sorted(codes.items()):
        entry = {
            "Description": f"{lab.get('display') or lab.get('code')} ({lab.get('code_system') or 'code'} "
            f"{lab.get('code')}), latest value"
        }
        if lab.get("unit"):
            entry["Units"] = str(lab["unit"])
        sidecar[column] = entry
    return PhenotypeTable("labs", ["participant_id", *sorted(codes)], rows, sidecar)


def diagnosis_table(subjects: Sequence[tuple[str, dict[str, Any]]]) -> PhenotypeTable | None:
    """One row per participant and diagnosis code (long format)."""
    rows = []
    for participant, doc in subjects:
        seen: set[tuple[str, str]] = set()
        for fact in (doc.get("diagnoses") or {}).values():
            key = (str(fact.get("code_system") or ""), str(fact.get("code") or ""))
            if not key[1] or key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "participant_id": f"sub-{participant}",
                    "code_system": key[0],
                    "code": key[1],
                    "description": fact.get("display"),
                }
            )
    if not rows:
        return None
    rows.sort(key=lambda r: (r["participant_id"], r["code_system"], r["code"]))
    sidecar = {
        "MeasurementToolMetadata": {"Description": "Diagnoses recorded in the EHR extracts"},
        "participant_id": {"Description": "Pseudonymous participant label, as in participants.tsv."},
        "code_system": {"Description": "Coding system of the diagnosis code (e.g. ICD-9, ICD-10)."},
        "code": {"Description": "Diagnosis code as the source writes it."},
        "description": {"Description": "Title of the diagnosis code in the source."},
    }
    return PhenotypeTable("diagnoses", ["participant_id", "code_system", "code", "description"], rows, sidecar)

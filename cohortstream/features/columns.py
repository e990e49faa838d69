"""Column names of the feature matrix and its data dictionary (name, source, unit, statistic).

Names are stable, lower-case, ASCII and safe in pandas, Parquet, CSV and BIDS TSV headers:

==========================================  ==============================================
column                                      meaning
==========================================  ==============================================
``age``, ``sex``                            years (EHR ``anchor_age``, else DICOM PatientAge); ``M``/``F``/``O``
``lab_<code>_<statistic>``                  a lab code's statistic over the subject's timeline
``dx_<prefix>``                             1 when a diagnosis code starts with the prefix, else 0
``q_<instrument>[_<event>]_<field>``        a questionnaire field (number, 0/1, or the choice's code)
``img_series_count``, ``img_study_count``   DICOM series and studies of the subject
``img_<modality>_series_count``             series of one modality
``img_<name>_ml``, ``img_<name>_status``    an annotation measurement and its review status
==========================================  ==============================================
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from cohortstream.features.spec import FeatureSpec, MeasurementSpec, QuestionnaireSpec

__all__ = [
    "BLOCKS",
    "ColumnInfo",
    "DictionaryBuilder",
    "data_dictionary",
    "diagnosis_column",
    "lab_column",
    "measurement_columns",
    "modality_column",
    "questionnaire_column",
    "questionnaire_stem",
]

BLOCKS = ("demographics", "labs", "diagnoses", "questionnaires", "imaging")
"""The feature blocks, one per modality; a document lists the ones the subject has."""

_UNSAFE = re.compile(r"[^a-z0-9]+")

ColumnInfo = dict[str, Any]
"""One data dictionary entry: ``name``, ``block``, ``source``, ``unit``, ``statistic``, ``dtype``, ``description``."""


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text.lower()).strip("_") or "x"


def lab_column(code: str, statistic: str) -> str:
    return f"lab_{_safe(code)}_{statistic}"


def diagnosis_column(prefix: str) -> str:
    return f"dx_{_safe(prefix)}"


def questionnaire_stem(spec: QuestionnaireSpec) -> str:
    """The prefix of one instrument's columns (``q_<instrument>[_<event>]_``)."""
    event = f"_{_safe(spec.event_name)}" if spec.event_name else ""
    return f"q_{_safe(spec.instrument)}{event}_"


def questionnaire_column(spec: QuestionnaireSpec, field: str) -> str:
    return questionnaire_stem(spec) + _safe(field)


def modality_column(modality: str) -> str:
    return f"img_{_safe(modality)}_series_count"


def measurement_columns(spec: MeasurementSpec) -> tuple[str, str]:
    """(value column in mL, review status column)."""
    return f"img_{spec.name}_ml", f"img_{spec.name}_status"


_LAB_MEANING = {
    "count": "number of rows",
    "first": "earliest value",
    "last": "latest value",
    "min": "smallest value",
    "max": "largest value",
    "mean": "mean",
    "std": "sample standard deviation (n-1)",
    "slope_per_day": "least-squares slope against time",
}


def _entry(
    name: str, block: str, source: str, statistic: str, dtype: str, description: str, unit: str | None = None
) -> ColumnInfo:
    return {
        "name": name,
        "block": block,
        "source": source,
        "unit": unit,
        "statistic": statistic,
        "dtype": dtype,
        "description": description,
    }


class DictionaryBuilder:
    """Collects, batch by batch, what the data dictionary needs from the documents: each lab
    code's units and the questionnaire columns with their types (so a large matrix can be
    streamed in two passes instead of held in memory)."""

    def __init__(self) -> None:
        self._units: dict[str, Counter[str]] = {}
        self._q_types: dict[str, str] = {}

    def add(self, documents: Iterable[Mapping[str, Any]]) -> None:
        for doc in documents:
            for code, unit in (doc.get("lab_units") or {}).items():
                self._units.setdefault(code, Counter())[unit] += 1
            for name, value in (doc.get("features") or {}).items():
                if not name.startswith("q_") or value is None:
                    continue
                if self._q_types.get(name) != "string":
                    self._q_types[name] = "string" if isinstance(value, str) else "float64"

    def lab_units(self) -> dict[str, str]:
        """The most common unit of each code (ties: in text order)."""
        return {code: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for code, c in self._units.items()}

    def columns(self, spec: FeatureSpec) -> list[ColumnInfo]:
        return _columns(spec, self.lab_units(), self._q_types)


def data_dictionary(spec: FeatureSpec, documents: Iterable[Mapping[str, Any]]) -> list[ColumnInfo]:
    """The matrix's columns in order, for ``spec`` (resolved) and the documents exported.

    Questionnaire columns depend on the fields the data carries (all numeric or coded
    fields unless the spec lists them), so they come from the documents; a field that
    holds a code anywhere is a ``string`` column.
    """
    builder = DictionaryBuilder()
    builder.add(documents)
    return builder.columns(spec)


def _columns(spec: FeatureSpec, units: Mapping[str, str], q_types: Mapping[str, str]) -> list[ColumnInfo]:
    columns: list[ColumnInfo] = [
        _entry("subject_id", "identity", "subject registry", "identifier", "string", "pseudonymous subject id")
    ]
    if spec.demographics:
        columns.append(
            _entry("age", "demographics", "EHR anchor_age, else DICOM PatientAge", "value", "Int64", "age", "years")
        )
        columns.append(
            _entry("sex", "demographics", "EHR gender, else DICOM PatientSex", "value", "string", "sex (M, F, O)")
        )
    if spec.labs is not None and spec.labs.codes is not None:
        for code in spec.labs.codes:
            unit = units.get(code)
            for stat in spec.labs.statistics:
                stat_unit = None if stat == "count" else (f"{unit}/day" if stat == "slope_per_day" and unit else unit)
                columns.append(
                    _entry(
                        lab_column(code, stat),
                        "labs",
                        f"EHR lab/observation code {code}",
                        stat,
                        "Int64" if stat == "count" else "float64",
                        f"{_LAB_MEANING[stat]} of code {code}",
                        stat_unit,
                    )
                )
    if spec.diagnoses is not None:
        for prefix in spec.diagnoses.prefixes:
            columns.append(
                _entry(
                    diagnosis_column(prefix),
                    "diagnoses",
                    "EHR diagnosis/condition codes",
                    "indicator",
                    "Int64",
                    f"1 when a diagnosis code starts with {prefix}",
                )
            )
    for q in spec.questionnaires:
        stem = questionnaire_stem(q)
        names = (
            [questionnaire_column(q, f) for f in q.fields]
            if q.fields is not None
            else sorted(n for n in q_types if n.startswith(stem))
        )
        for name in names:
            dtype = q_types.get(name, "float64")
            source = f"REDCap instrument {q.instrument}" + (f", event {q.event_name}" if q.event_name else "")
            statistic = "code" if dtype == "string" else "value"
            columns.append(_entry(name, "questionnaires", source, statistic, dtype, f"field {name[len(stem) :]}"))
    if spec.imaging is not None:
        columns.append(_entry("img_series_count", "imaging", "DICOM", "count", "Int64", "DICOM series"))
        columns.append(_entry("img_study_count", "imaging", "DICOM", "count", "Int64", "DICOM studies"))
        for modality in spec.imaging.modalities:
            columns.append(
                _entry(modality_column(modality), "imaging", "DICOM", "count", "Int64", f"{modality} series")
            )
        for m in spec.imaging.measurements:
            value_column, status_column = measurement_columns(m)
            source = f"annotation model {m.model}, segment {m.segment}"
            columns.append(_entry(value_column, "imaging", source, "volume", "float64", f"{m.segment} volume", "mL"))
            columns.append(
                _entry(
                    status_column,
                    "imaging",
                    source,
                    "review status",
                    "string",
                    "suggested, accepted or corrected (rejected suggestions are not used)",
                )
            )
    return columns

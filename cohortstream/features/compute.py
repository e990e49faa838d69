"""Compute one subject's feature document from its inputs and a (resolved) spec. Pure.

The document is a function of the inputs and the spec only (no clock, no arrival order),
so the live stream and a rebuild by replay write the same document, and rebuilding
twice gives identical documents. Column names and their meaning: :mod:`.columns`.

:func:`feature_document` is the definition, one subject at a time in plain Python.
The lane and the rebuilds compute the lab block of many subjects at once
(:mod:`.cohort`, numpy) and hand it to :func:`assemble_document`, which builds
everything else here; a unit test holds the two lab computations equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cohortstream.features.columns import (
    BLOCKS,
    diagnosis_column,
    lab_column,
    measurement_columns,
    modality_column,
    questionnaire_column,
)
from cohortstream.features.inputs import AnnotationEntry, LabRow, QuestionnaireEntry, SubjectInputs
from cohortstream.features.spec import FeatureSpec, LabStatistic, MeasurementSpec, QuestionnaireSpec

__all__ = [
    "FeatureValue",
    "LabBlock",
    "assemble_document",
    "feature_document",
    "lab_statistics",
    "questionnaire_values",
    "spec_header",
]

FeatureValue = float | int | str | None

LabBlock = tuple[dict[str, FeatureValue], dict[str, str]]
"""A subject's lab columns (``lab_<code>_<statistic>`` → value) and units (code → unit)."""

_SECONDS_PER_DAY = 86_400.0


def lab_statistics(rows: Sequence[LabRow], wanted: Sequence[LabStatistic]) -> dict[LabStatistic, float | int | None]:
    """HAIM's statistics of one code's rows, given in time order (ties: row id).

    ``std`` is the sample standard deviation (n − 1, pandas' default), None below two
    rows; ``slope_per_day`` is the least-squares slope of value against time in days,
    None below two rows or when every row has the same time.
    """
    n = len(rows)
    values = [r.value for r in rows]
    out: dict[LabStatistic, float | int | None] = {}
    mean = math.fsum(values) / n if n else None
    for stat in wanted:
        if stat == "count":
            out[stat] = n
        elif n == 0:
            out[stat] = None
        elif stat == "first":
            out[stat] = values[0]
        elif stat == "last":
            out[stat] = values[-1]
        elif stat == "min":
            out[stat] = min(values)
        elif stat == "max":
            out[stat] = max(values)
        elif stat == "mean":
            out[stat] = mean
        elif stat == "std":
            assert mean is not None
            out[stat] = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        else:
            out[stat] = _slope_per_day(rows, values, mean)
    return out


def _slope_per_day(rows: Sequence[LabRow], values: Sequence[float], mean: float | None) -> float | None:
    if len(rows) < 2 or mean is None:
        return None
    t0 = rows[0].at
    days = [(r.at - t0).total_seconds() / _SECONDS_PER_DAY for r in rows]
    mean_day = math.fsum(days) / len(days)
    sxx = math.fsum((d - mean_day) ** 2 for d in days)
    if sxx == 0:
        return None
    return math.fsum((d - mean_day) * (v - mean) for d, v in zip(days, values, strict=True)) / sxx


def _chosen(entries: Sequence[QuestionnaireEntry], spec: QuestionnaireSpec) -> QuestionnaireEntry | None:
    matching = [
        e
        for e in entries
        if e.instrument == spec.instrument and (spec.event_name is None or e.event_name == spec.event_name)
    ]
    # The most recently pulled instance (ties: the document key): the subject's latest answers.
    return max(matching, key=lambda e: (e.pulled_at, e.key), default=None)


def questionnaire_values(entry: QuestionnaireEntry, spec: QuestionnaireSpec) -> dict[str, FeatureValue]:
    """Field → value of the numeric and coded fields, typed as the data dictionary typed them:
    integers and decimals as numbers, yes/no as 0/1, radio/dropdown codes as text (their
    label is in ``labels``). Free text, dates and checkboxes are left out."""
    out: dict[str, FeatureValue] = {}
    for name, value in entry.values.items():
        if spec.fields is not None and name not in spec.fields:
            continue
        if isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, str) and name in entry.labels:
            out[name] = value
    return out


def _measurement(annotations: Sequence[AnnotationEntry], spec: MeasurementSpec) -> tuple[float, str] | None:
    wanted = spec.segment.casefold()
    candidates = []
    for a in annotations:
        if a.model != spec.model or a.status == "rejected":
            continue
        volume = next((v for label, v in a.segments.items() if label.casefold() == wanted), None)
        if volume is None:
            continue
        reviewed = a.status in ("accepted", "corrected")
        candidates.append(((reviewed, a.suggested_at, a.annotation_id), (volume, a.status)))
    # A reviewed (accepted or corrected) suggestion before a pending one; then the latest.
    return max(candidates)[1] if candidates else None


def _lab_block(spec: FeatureSpec, inputs: SubjectInputs) -> LabBlock | None:
    if spec.labs is None or not inputs.labs:
        return None
    assert spec.labs.codes is not None, "resolve most_frequent before computing"
    features: dict[str, FeatureValue] = {}
    units: dict[str, str] = {}
    per_code: dict[str, list[LabRow]] = {code: [] for code in spec.labs.codes}
    for row in inputs.labs:
        if row.code in per_code:
            per_code[row.code].append(row)
    for code, rows in per_code.items():
        for stat, value in lab_statistics(rows, spec.labs.statistics).items():
            features[lab_column(code, stat)] = value
        unit = next((r.unit for r in reversed(rows) if r.unit), None)
        if unit:
            units[code] = unit
    return features, units


def feature_document(spec: FeatureSpec, inputs: SubjectInputs) -> dict[str, Any]:
    """The ``features`` document of one subject. ``spec`` must be resolved (lab codes fixed)."""
    return assemble_document(spec, inputs, _lab_block(spec, inputs))


def spec_header(spec: FeatureSpec) -> dict[str, Any]:
    """What every document says about the spec that made it (``sha256`` hashes the spec's
    JSON: compute it once per cohort, not once per document)."""
    return {"name": spec.name, "version": spec.version, "sha256": spec.sha256}


def assemble_document(
    spec: FeatureSpec, inputs: SubjectInputs, labs: LabBlock | None, header: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The document of one subject whose lab block is already computed (None: the subject
    has no lab row with a number, or the spec has no labs); ``inputs.labs`` is not read.
    ``header``: :func:`spec_header` of ``spec``, when the caller computed it already."""
    features: dict[str, FeatureValue] = {}
    units: dict[str, str] = {}
    blocks: list[str] = []

    if spec.demographics and (inputs.sex is not None or inputs.age is not None):
        blocks.append("demographics")
        features["age"] = inputs.age
        features["sex"] = inputs.sex

    if spec.labs is not None and labs is not None:
        blocks.append("labs")
        features.update(labs[0])
        units = labs[1]

    if spec.diagnoses is not None and inputs.diagnoses:
        blocks.append("diagnoses")
        for prefix in spec.diagnoses.prefixes:
            features[diagnosis_column(prefix)] = int(any(code.startswith(prefix) for code in inputs.diagnoses))

    answered = False
    for q in spec.questionnaires:
        entry = _chosen(inputs.questionnaires, q)
        if entry is None:
            continue
        answered = True
        for name, answer in questionnaire_values(entry, q).items():
            features[questionnaire_column(q, name)] = answer
    if answered:
        blocks.append("questionnaires")

    if spec.imaging is not None and inputs.series:
        blocks.append("imaging")
        features["img_series_count"] = len(inputs.series)
        features["img_study_count"] = len({s.study for s in inputs.series})
        for modality in spec.imaging.modalities:
            features[modality_column(modality)] = sum(1 for s in inputs.series if s.modality == modality)
        for m in spec.imaging.measurements:
            value_column, status_column = measurement_columns(m)
            found = _measurement(inputs.annotations, m)
            features[value_column] = found[0] if found else None
            features[status_column] = found[1] if found else None

    assert set(blocks) <= set(BLOCKS)
    return {
        "_id": inputs.subject_id,
        "subject_id": inputs.subject_id,
        "identifiers": list(inputs.identifiers),
        "spec": dict(header) if header is not None else spec_header(spec),
        "as_of": inputs.last_event_at,
        "blocks": blocks,
        "features": features,
        "lab_units": units,
    }

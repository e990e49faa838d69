"""What the features of one subject are computed from, and how it is read from input documents.

The stream folds every event into *input documents* (collection ``feature_inputs``, one
per source identifier and one per DICOM series; ``consumers/features/fold.py`` writes
them with ``$set`` on natural keys, so replays change nothing). A rebuild by replay
folds the same events into the same documents in memory. Both paths then call
:func:`subject_inputs` on those documents, so the live stream and the rebuild compute
from the same thing.

Input document shapes (``_id``):

- ``ehr:<source>|<subject>``: ``demographics {sex, age}``, ``labs {row: [code, at, value, unit]}``,
  ``diagnoses {row: code}``
- ``redcap:<url>|<project>|<record>``: ``questionnaires {key: {instrument, event_name,
  repeat_instance, values, labels, pulled_at}}``
- ``dicom:<PatientID>``: ``demographics {sex, age}``, ``series {safe uid: {uid, study, modality}}``
- ``series:<SeriesInstanceUID>``: ``patient_id``, ``annotations {id: {model, version,
  segments {label: volume_ml}, suggested_at}}``, ``reviews {id: {event id: [decision, reviewed_at]}}``

Every document also carries ``last_event_at`` (``$max`` of the events' ``emitted_at``).
A document read back from the snapshot topic (:mod:`.snapshot`) holds its rows as
``lab_columns`` (:class:`~.labs.LabColumns`) instead of the ``labs`` map.

A lab value that is not a finite number (NaN, ±infinity) counts as no value: such a row
is kept in the inputs but left out of every statistic, as a row without a number is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cohortstream.features.labs import LabColumns

__all__ = [
    "AnnotationEntry",
    "LabRow",
    "QuestionnaireEntry",
    "SeriesEntry",
    "SubjectInputs",
    "series_ids_of",
    "subject_inputs",
    "subject_lab_columns",
]

_DEMOGRAPHIC_ORDER = {"ehr": 0, "dicom": 1, "redcap": 2}


@dataclass(frozen=True)
class LabRow:
    code: str
    at: datetime
    value: float
    unit: str | None
    row: str


@dataclass(frozen=True)
class QuestionnaireEntry:
    key: str
    instrument: str
    event_name: str | None
    repeat_instance: int
    values: Mapping[str, Any]
    labels: Mapping[str, str]
    pulled_at: datetime


@dataclass(frozen=True)
class SeriesEntry:
    uid: str
    study: str
    modality: str


@dataclass(frozen=True)
class AnnotationEntry:
    annotation_id: str
    series_uid: str
    model: str
    segments: Mapping[str, float]
    suggested_at: datetime
    status: str
    """``suggested`` (no review yet), ``accepted``, ``corrected`` or ``rejected`` (latest review)."""


@dataclass
class SubjectInputs:
    """Everything one subject's features are computed from."""

    subject_id: str
    identifiers: list[str]
    sex: str | None = None
    age: int | None = None
    labs: list[LabRow] = field(default_factory=list)
    diagnoses: list[str] = field(default_factory=list)
    questionnaires: list[QuestionnaireEntry] = field(default_factory=list)
    series: list[SeriesEntry] = field(default_factory=list)
    annotations: list[AnnotationEntry] = field(default_factory=list)
    last_event_at: datetime | None = None


def series_ids_of(documents: Iterable[Mapping[str, Any]]) -> list[str]:
    """``_id`` of the series input documents that the identifiers' documents name."""
    ids = []
    for doc in documents:
        for entry in (doc.get("series") or {}).values():
            ids.append(f"series:{entry['uid']}")
    return sorted(set(ids))


def _latest(times: Iterable[datetime | None]) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


_DECISIONS = {"ACCEPTED": "accepted", "CORRECTED": "corrected", "REJECTED": "rejected"}


def _annotation_status(reviews: Mapping[str, Sequence[Any]] | None) -> str:
    if not reviews:
        return "suggested"
    # The latest review by its review time; equal times: the event id decides (stable).
    _, decision = max(((at, event_id), decision) for event_id, (decision, at) in reviews.items())
    return _DECISIONS.get(str(decision), "suggested")


def _in_reading_order(identifier_docs: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    if len(identifier_docs) < 2:
        return identifier_docs
    return sorted(identifier_docs, key=lambda d: (_DEMOGRAPHIC_ORDER.get(str(d["_id"]).split(":", 1)[0], 9), d["_id"]))


def subject_lab_columns(identifier_docs: Sequence[Mapping[str, Any]]) -> LabColumns | None:
    """Every lab row of a subject's identifier documents as columns (None: no rows), in the
    order :func:`subject_inputs` gives ``labs``; non-finite values included (the
    computation leaves them out)."""
    parts = []
    for doc in _in_reading_order(identifier_docs):
        columns = doc.get("lab_columns")
        if columns is None and doc.get("labs"):
            columns = LabColumns.from_rows(doc["labs"])
        if columns is not None:
            parts.append(columns)
    return LabColumns.merge(parts)


def subject_inputs(
    subject_id: str,
    identifier_docs: Sequence[Mapping[str, Any]],
    series_docs: Sequence[Mapping[str, Any]],
    *,
    lab_rows: bool = True,
) -> SubjectInputs:
    """Assemble a subject from its identifiers' input documents and its series' documents.

    Demographics come from the EHR first, then DICOM (PatientSex, PatientAge), each
    identifier in key order; missing ones stay None. ``lab_rows=False`` leaves ``labs``
    empty: the cohort computation takes them as columns (:func:`subject_lab_columns`),
    and one object per row is what a rebuild cannot afford.
    """
    docs = _in_reading_order(identifier_docs)
    inputs = SubjectInputs(subject_id=subject_id, identifiers=sorted(str(d["_id"]) for d in identifier_docs))
    for doc in docs:
        demographics = doc.get("demographics") or {}
        if inputs.sex is None and demographics.get("sex") is not None:
            inputs.sex = demographics["sex"]
        if inputs.age is None and demographics.get("age") is not None:
            inputs.age = int(demographics["age"])
        for row, (code, at, value, unit) in (doc.get("labs") or {}).items() if lab_rows else ():
            if math.isfinite(value):
                inputs.labs.append(LabRow(code=code, at=at, value=float(value), unit=unit, row=row))
        inputs.diagnoses.extend((doc.get("diagnoses") or {}).values())
        for key, q in (doc.get("questionnaires") or {}).items():
            inputs.questionnaires.append(
                QuestionnaireEntry(
                    key=key,
                    instrument=q["instrument"],
                    event_name=q.get("event_name"),
                    repeat_instance=int(q.get("repeat_instance") or 1),
                    values=q.get("values") or {},
                    labels=q.get("labels") or {},
                    pulled_at=q["pulled_at"],
                )
            )
        for entry in (doc.get("series") or {}).values():
            inputs.series.append(
                SeriesEntry(uid=entry["uid"], study=entry.get("study") or "", modality=entry["modality"])
            )
    for doc in series_docs:
        uid = str(doc["_id"]).removeprefix("series:")
        reviews = doc.get("reviews") or {}
        for annotation_id, a in (doc.get("annotations") or {}).items():
            inputs.annotations.append(
                AnnotationEntry(
                    annotation_id=annotation_id,
                    series_uid=uid,
                    model=a["model"],
                    segments={str(k): float(v) for k, v in (a.get("segments") or {}).items()},
                    suggested_at=a["suggested_at"],
                    status=_annotation_status(reviews.get(annotation_id)),
                )
            )
    inputs.labs.sort(key=lambda r: (r.at, r.row))
    inputs.diagnoses.sort()
    inputs.questionnaires.sort(key=lambda q: q.key)
    inputs.series.sort(key=lambda s: s.uid)
    inputs.annotations.sort(key=lambda a: a.annotation_id)
    inputs.last_event_at = _latest(d.get("last_event_at") for d in [*identifier_docs, *series_docs])
    return inputs

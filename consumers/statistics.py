"""Precomputed counters of the ``statistics`` collection, kept by the view sinks.

Why counters: ``GET /statistics`` must not scan every view document per request, and
grouping (per modality, per day, per instrument/event) would scan the views on every
request. Each counter is one document ``{_id: "<dimension>|<key>", dimension, key,
count}``; after a batch the sink that changed a view *recomputes* the counters whose key
the batch touched with one ``count_documents`` on an indexed field and ``$set`` s the
result. Never a blind ``$inc``: re-applying a batch after a crash (or replaying a topic
from offset 0) recomputes the same numbers instead of counting twice.

Pure helpers (:func:`counters_for_dicom`, ...) say which counters a batch touches and
how each is counted; :func:`refresh_counters` does the I/O through the sink's retries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

from pymongo import UpdateOne

from cohortstream.events import DicomInstanceReceived, EhrRecord, EhrRecordType, RedcapRecordChanged
from cohortstream.mongo import find_all
from consumers.mongo_sink import MongoSink, together

__all__ = [
    "AGE_BANDS",
    "ANNOTATION_STATUSES",
    "COMPLETION_STATUSES",
    "STATISTICS",
    "Counter",
    "age_band",
    "age_band_counters",
    "age_years",
    "counters_for_annotations",
    "counters_for_dicom",
    "counters_for_ehr",
    "counters_for_redcap",
    "current_ages",
    "day_range",
    "normalise_sex",
    "refresh_counters",
]

#: The collection holding the counters.
STATISTICS = "statistics"

COMPLETION_STATUSES = ("INCOMPLETE", "UNVERIFIED", "COMPLETE")
ANNOTATION_STATUSES = ("suggested", "accepted", "rejected", "corrected")

#: (label, lowest age, first age above the band); None: no upper bound.
AGE_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("0-17", 0, 18),
    ("18-39", 18, 40),
    ("40-59", 40, 60),
    ("60-79", 60, 80),
    ("80+", 80, None),
)

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_DIVISOR = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}


@dataclass(frozen=True)
class Counter:
    """One counter: where it lives in ``statistics`` and the indexed query that counts it."""

    dimension: str
    key: str
    collection: str
    query: dict[str, Any] = field(compare=False, hash=False)
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def doc_id(self) -> str:
        return f"{self.dimension}|{self.key}"


def age_years(text: str | None) -> int | None:
    """Whole years of a DICOM Age String (``045Y``, ``006M``, ``010W``, ``003D``) or a bare
    number (MIMIC ``anchor_age``); None when absent or unreadable (never an error: the
    views stay tolerant of what a modality writes)."""
    if text is None:
        return None
    value = str(text).strip().upper()
    if value.isdigit():
        return int(value)
    match = _AGE.match(value)
    if match is None:
        return None
    return int(int(match.group(1)) / _AGE_DIVISOR[match.group(2)])


def age_band(years: int) -> str:
    """The label of the band holding ``years``."""
    for label, low, high in AGE_BANDS:
        if years >= low and (high is None or years < high):
            return label
    return AGE_BANDS[0][0]  # negative ages do not occur; keep them countable


def age_band_counters(dimension: str, collection: str, ages: Iterable[int | None]) -> list[Counter]:
    """Counters of the bands of ``ages`` (new ages and the ages documents had before the
    batch: a document moving to another band changes both)."""
    labels = {age_band(a) for a in ages if a is not None}
    return [
        Counter(
            dimension,
            label,
            collection,
            {"age_years": {"$gte": low} if high is None else {"$gte": low, "$lt": high}},
            {"band": label},
        )
        for label, low, high in AGE_BANDS
        if label in labels
    ]


def normalise_sex(text: str | None) -> str | None:
    """``M``/``F``/``O`` from DICOM PatientSex, MIMIC ``gender`` or FHIR ``gender``."""
    if text is None:
        return None
    return _SEX.get(str(text).strip().lower())


def day_range(day: date) -> dict[str, datetime]:
    """The ``$gte``/``$lt`` bounds of one UTC day."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {"$gte": start, "$lt": start + timedelta(days=1)}


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def _per_day(dimension: str, collection: str, time_field: str, days: Iterable[date]) -> list[Counter]:
    return [
        Counter(dimension, day.isoformat(), collection, {time_field: day_range(day)}, {"day": day.isoformat()})
        for day in sorted(set(days))
    ]


def counters_for_dicom(
    events: Sequence[DicomInstanceReceived], previous_ages: Iterable[int | None] = ()
) -> list[Counter]:
    """Series per modality and body part, patients per modality, sex and age band (of the
    batch's ages and ``previous_ages``, what the patients showed before), instances per day."""
    counters = age_band_counters(
        "patients_by_age_band", "patients", [*(age_years(e.patient_age) for e in events), *previous_ages]
    )
    for modality in sorted({e.modality for e in events}):
        counters.append(
            Counter("series_by_modality", modality, "series", {"modality": modality}, {"modality": modality})
        )
        counters.append(
            Counter("patients_by_modality", modality, "patients", {"modalities": modality}, {"modality": modality})
        )
    for part in sorted({e.body_part_examined for e in events if e.body_part_examined}):
        counters.append(
            Counter("series_by_body_part", part, "series", {"body_part_examined": part}, {"body_part": part})
        )
    for sex in sorted({s for s in (normalise_sex(e.patient_sex) for e in events) if s}):
        counters.append(Counter("patients_by_sex", sex, "patients", {"sex_normalised": sex}, {"sex": sex}))
    counters += _per_day("dicom_instances_per_day", "instances", "received_at", (_day(e.received_at) for e in events))
    return counters


def counters_for_redcap(events: Sequence[RedcapRecordChanged], previous_days: Iterable[date] = ()) -> list[Counter]:
    """Completion per instrument/event (every status: a record may move between them) and
    questionnaire documents per day of their latest pull (``previous_days``: the days the
    documents showed before this batch, which lose them)."""
    counters: list[Counter] = []
    for instrument, event_name in sorted({(e.instrument, e.event_name or "") for e in events}):
        for status in COMPLETION_STATUSES:
            counters.append(
                Counter(
                    "questionnaire_completion",
                    f"{instrument}|{event_name}|{status}",
                    "questionnaires",
                    {"instrument": instrument, "event_name": event_name or None, "completion_status": status},
                    {"instrument": instrument, "event_name": event_name, "status": status},
                )
            )
    days = {_day(e.emitted_at) for e in events} | set(previous_days)
    counters += _per_day("redcap_records_per_day", "questionnaires", "pulled_at", days)
    return counters


def counters_for_ehr(records: Sequence[EhrRecord], previous_ages: Iterable[int | None] = ()) -> list[Counter]:
    """EHR rows per day of ingestion, EHR subjects per sex and age band (MIMIC ``anchor_age``;
    ``previous_ages``: what the subjects showed before the batch)."""
    counters = age_band_counters(
        "ehr_subjects_by_age_band",
        "ehr_subjects",
        [
            *(age_years(r.attributes.get("anchor_age")) for r in records if r.record_type == EhrRecordType.PATIENT),
            *previous_ages,
        ],
    )
    counters += _per_day("ehr_records_per_day", "ehr_timeline", "ingested_at", (_day(r.emitted_at) for r in records))
    sexes = {normalise_sex(r.attributes.get("gender")) for r in records if r.attributes.get("gender")}
    for sex in sorted(s for s in sexes if s):
        counters.append(Counter("ehr_subjects_by_sex", sex, "ehr_subjects", {"sex_normalised": sex}, {"sex": sex}))
    return counters


def counters_for_annotations(models: Iterable[str]) -> list[Counter]:
    """Suggestions per model and status (every status: a review moves one between them)."""
    return [
        Counter(
            "annotations_by_model_status",
            f"{model}|{status}",
            "annotations",
            {"model_name": model, "status": status},
            {"model": model, "status": status},
        )
        for model in sorted(set(models))
        for status in ANNOTATION_STATUSES
    ]


async def current_ages(sink: MongoSink, collection: str, keys: Iterable[str]) -> list[int | None]:
    """``age_years`` of these documents now (by ``_id``), read before a batch changes them."""
    wanted = sorted(set(keys))
    ages: list[int | None] = []
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        docs = await sink.retry(
            partial(
                find_all, sink.db[collection], {"_id": {"$in": chunk}, "age_years": {"$ne": None}}, {"age_years": 1}
            ),
            f"read {collection} ages",
        )
        ages += [d.get("age_years") for d in docs]
    return ages


async def refresh_counters(sink: MongoSink, counters: Iterable[Counter]) -> None:
    """Recompute ``counters`` from the views and store them (idempotent)."""
    unique = sorted({c.doc_id: c for c in counters}.items())
    # The counts are independent: sent together, the batch waits for the slowest one.
    counts = await together(
        *(
            sink.retry(
                partial(sink.db[counter.collection].count_documents, counter.query), f"count {counter.dimension}"
            )
            for _, counter in unique
        )
    )
    operations = []
    for (doc_id, counter), count in zip(unique, counts, strict=True):
        operations.append(
            UpdateOne(
                {"_id": doc_id},
                {
                    "$set": {
                        "dimension": counter.dimension,
                        "key": counter.key,
                        "labels": counter.labels,
                        "count": int(count),
                    }
                },
                upsert=True,
            )
        )
    await sink.bulk_write(STATISTICS, operations, "update statistics counters")

"""``GET /statistics``: the cohort dashboard's numbers, without scanning the views per request.

How each statistic is answered (also in the answer's ``answered_by``):

==============================  ===========================================================
statistic                       answered by
==============================  ===========================================================
``totals``                      sums of the counters below
``series_by_modality``,         **counters** in ``statistics`` (consumers/statistics.py):
``patients_by_modality``,       recomputed by the view sinks, for the keys a batch touched,
``series_by_body_part``,        with one indexed ``count_documents`` each and ``$set``
``sex``, ``age_bands``,         (never ``$inc``, so replays do not count twice); read here
``questionnaire_completion``,   with one ``find`` of the small ``statistics`` collection.
``annotations_by_model``,       Age bands (0–17, 18–39, 40–59, 60–79, 80+) count
``ingestion`` (per day)         ``patients.age_years`` (DICOM PatientAge at the latest
                                study) and ``ehr_subjects.age_years`` (MIMIC
                                ``anchor_age``); a sink recounts the bands of the batch's
                                ages and of the ages the documents had before it
``multimodal``                  **registry join, cached**: keys of ``patients``,
                                ``questionnaires`` and ``ehr_subjects`` (``distinct``)
                                mapped to subjects with one read of the registry and
                                intersected, in a background task at most every
                                :data:`MULTIMODAL_MAX_AGE_S` seconds per API process; a
                                request never waits for it (``null`` until the first one
                                ends, ``computed_at`` says when), because registry merges
                                make an incremental counter unsafe without transactions
==============================  ===========================================================

Sex is counted per source view (DICOM patients, EHR subjects), normalised to M/F/O; a
subject with both is in both. Age likewise, per source: a DICOM PatientAge is the age at
a study, MIMIC's ``anchor_age`` the age in its anchor year, and they are not merged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api import auth
from api.services import ApiServices, get_services
from consumers.statistics import AGE_BANDS, ANNOTATION_STATUSES, COMPLETION_STATUSES, STATISTICS

__all__ = ["MULTIMODAL_MAX_AGE_S", "Statistics", "router"]

log = logging.getLogger(__name__)

_GUARD = [auth.RESEARCHER] if auth.RESEARCHER is not None else []

router = APIRouter(prefix="/statistics", tags=["statistics"], dependencies=_GUARD)

Services = Annotated[ApiServices, Depends(get_services)]

MULTIMODAL_MAX_AGE_S = 300.0


class DayCount(BaseModel):
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    count: int


class Completion(BaseModel):
    instrument: str
    event_name: str | None = Field(None, description="REDCap unique event name; null for classic projects.")
    counts: dict[str, int] = Field(description="Per completion status: INCOMPLETE, UNVERIFIED, COMPLETE.")


class ModelStatus(BaseModel):
    model: str
    counts: dict[str, int] = Field(description="Per status: suggested, accepted, rejected, corrected.")


class Multimodal(BaseModel):
    subjects: int = Field(description="Registered subjects.")
    with_imaging: int
    with_questionnaire: int
    with_ehr: int
    complete: int = Field(description="Subjects with imaging, a questionnaire and EHR data.")
    computed_at: datetime
    max_age_s: float


class Ingestion(BaseModel):
    dicom_instances_per_day: list[DayCount] = Field(description="Instances by day received.")
    redcap_records_per_day: list[DayCount] = Field(description="Questionnaire documents by day of their latest pull.")
    ehr_records_per_day: list[DayCount] = Field(description="EHR rows by day they entered the stream.")


class Statistics(BaseModel):
    """The dashboard's numbers; ``answered_by`` says how each was obtained."""

    totals: dict[str, int] = Field(
        description="Sums of the counters: series, instances, questionnaires, EHR rows, annotations."
    )
    series_by_modality: dict[str, int]
    patients_by_modality: dict[str, int]
    series_by_body_part: dict[str, int]
    sex: dict[str, dict[str, int]] = Field(description="{'dicom': {...}, 'ehr': {...}}")
    age_bands: dict[str, dict[str, int]] = Field(description="{'dicom': {...}, 'ehr': {...}}")
    questionnaire_completion: list[Completion]
    annotations_by_model: list[ModelStatus]
    ingestion: Ingestion
    multimodal: Multimodal | None = Field(description="null until the first background computation has finished.")
    answered_by: dict[str, str]


@dataclass
class _MultimodalCache:
    value: Multimodal | None = None
    at: float = 0.0
    task: asyncio.Task[None] | None = None


async def _counters(db: Any) -> dict[str, list[dict[str, Any]]]:
    by_dimension: dict[str, list[dict[str, Any]]] = {}
    for doc in await db[STATISTICS].find({"dimension": {"$exists": True}}).to_list():
        by_dimension.setdefault(str(doc["dimension"]), []).append(doc)
    return by_dimension


def _simple(docs: list[dict[str, Any]]) -> dict[str, int]:
    return {str(d["key"]): int(d["count"]) for d in sorted(docs, key=lambda d: str(d["key"])) if d["count"]}


def _per_day(docs: list[dict[str, Any]]) -> list[DayCount]:
    return [
        DayCount(day=str(d["key"]), count=int(d["count"]))
        for d in sorted(docs, key=lambda d: str(d["key"]))
        if d["count"]
    ]


def _grouped(
    docs: list[dict[str, Any]], group: tuple[str, ...], status_label: str, statuses: tuple[str, ...]
) -> list[tuple[tuple[str, ...], dict[str, int]]]:
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    for doc in docs:
        labels = doc.get("labels") or {}
        key = tuple(str(labels.get(g, "")) for g in group)
        groups.setdefault(key, dict.fromkeys(statuses, 0))[str(labels.get(status_label))] = int(doc["count"])
    return [(k, v) for k, v in sorted(groups.items()) if any(v.values())]


def _totals(counters: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Totals from the counters (every series has one modality, every instance one day...)."""

    def total(dimension: str) -> int:
        return sum(int(d["count"]) for d in counters.get(dimension, []))

    return {
        "series": total("series_by_modality"),
        "instances": total("dicom_instances_per_day"),
        "questionnaires": total("questionnaire_completion"),
        "ehr_records": total("ehr_records_per_day"),
        "annotations": total("annotations_by_model_status"),
    }


def _bands(docs: list[dict[str, Any]]) -> dict[str, int]:
    counts = {str(d["key"]): int(d["count"]) for d in docs}
    return {label: counts.get(label, 0) for label, _, _ in AGE_BANDS}


async def _multimodal(db: Any) -> Multimodal:
    # One pass over the registry and one over each view's keys, in the background (at most
    # every 300 s per API process): fewer, whole reads beat many ``$in`` lookups here.
    subject_of = {
        str(d["_id"]): str(d["subject_id"])
        for d in await db["subject_identifiers"].find({}, {"subject_id": 1}).to_list()
    }

    def subjects_of(keys: list[Any]) -> set[str]:
        return {subject_of[str(k)] for k in keys if str(k) in subject_of}

    imaging = subjects_of([f"dicom:{p}" for p in await db["patients"].distinct("_id")])
    questionnaire = subjects_of(await db["questionnaires"].distinct("subject_key"))
    ehr = subjects_of(await db["ehr_subjects"].distinct("_id"))
    return Multimodal(
        subjects=len(set(subject_of.values())),
        with_imaging=len(imaging),
        with_questionnaire=len(questionnaire),
        with_ehr=len(ehr),
        complete=len(imaging & questionnaire & ehr),
        computed_at=datetime.now(UTC),
        max_age_s=MULTIMODAL_MAX_AGE_S,
    )


async def _refresh(cache: _MultimodalCache, db: Any) -> None:
    try:
        cache.value, cache.at = await _multimodal(db), time.monotonic()
    except Exception as exc:
        log.error("multimodal statistics not computed", extra={"error": type(exc).__name__})
    finally:
        cache.task = None


def _cached_multimodal(request: Request, db: Any) -> Multimodal | None:
    """The cached figure (None before the first computation ends); starts a computation in
    the background when there is none or it is older than :data:`MULTIMODAL_MAX_AGE_S`, so
    no request waits for it and at most one runs per process."""
    cache: _MultimodalCache | None = getattr(request.app.state, "multimodal_statistics", None)
    if cache is None:
        cache = request.app.state.multimodal_statistics = _MultimodalCache()
    stale = cache.value is None or time.monotonic() - cache.at > MULTIMODAL_MAX_AGE_S
    if stale and cache.task is None:
        cache.task = asyncio.create_task(_refresh(cache, db))
    return cache.value


_ANSWERED_BY = {
    "totals": "sums of counters",
    "series_by_modality": "counter",
    "patients_by_modality": "counter",
    "series_by_body_part": "counter",
    "sex": "counter",
    "questionnaire_completion": "counter",
    "annotations_by_model": "counter",
    "ingestion": "counter",
    "age_bands": "counter",
    "multimodal": f"registry join, computed in the background at most every {MULTIMODAL_MAX_AGE_S:.0f} s",
}


@router.get("", summary="Cohort statistics", response_model=Statistics)
async def statistics(request: Request, services: Services) -> Statistics:
    """Counts by modality, body part, sex, age band, questionnaire completion, annotation
    status per model, ingestion per day and multimodal completeness."""
    db = services.connected_db()
    counters = await _counters(db)
    multimodal = _cached_multimodal(request, db)
    completion = _grouped(
        counters.get("questionnaire_completion", []), ("instrument", "event_name"), "status", COMPLETION_STATUSES
    )
    annotations = _grouped(counters.get("annotations_by_model_status", []), ("model",), "status", ANNOTATION_STATUSES)
    return Statistics(
        totals=_totals(counters),
        series_by_modality=_simple(counters.get("series_by_modality", [])),
        patients_by_modality=_simple(counters.get("patients_by_modality", [])),
        series_by_body_part=_simple(counters.get("series_by_body_part", [])),
        sex={
            "dicom": _simple(counters.get("patients_by_sex", [])),
            "ehr": _simple(counters.get("ehr_subjects_by_sex", [])),
        },
        age_bands={
            "dicom": _bands(counters.get("patients_by_age_band", [])),
            "ehr": _bands(counters.get("ehr_subjects_by_age_band", [])),
        },
        questionnaire_completion=[
            Completion(instrument=k[0], event_name=k[1] or None, counts=v) for k, v in completion
        ],
        annotations_by_model=[ModelStatus(model=k[0], counts=v) for k, v in annotations],
        ingestion=Ingestion(
            dicom_instances_per_day=_per_day(counters.get("dicom_instances_per_day", [])),
            redcap_records_per_day=_per_day(counters.get("redcap_records_per_day", [])),
            ehr_records_per_day=_per_day(counters.get("ehr_records_per_day", [])),
        ),
        multimodal=multimodal,
        answered_by=_ANSWERED_BY,
    )

"""Read-only queries behind the subject list (``GET /subjects``) and ``/cohorts``: filters,
pages, summaries. One subject with every modality (``GET /subjects/{subject}``, also the
CLI's ``subjects show``) is :mod:`cohortstream.subject_view`'s.

The list and the export read the read model the view sinks keep
(:mod:`consumers.subject_facets`). A page of the list reads the subject sets of its
filters (the set of every subject without filters) in one ``find``: sorted arrays of
subject ids, intersected in memory and walked from the cursor in subject-id order, so
the page is the next ``limit`` ids (nothing filtered afterwards); their summary rows
are one ``$in`` on ``subject_facets``. Summaries of given ids (export chunks) are the
same ``$in``; a subject the read model does not hold yet is summarised from the views
as before (four ``$in`` finds per chunk).

:func:`filtered_subjects` is the former way of filtering (one indexed ``find`` per
filter on the view that holds it, resolved through the registry, combined in Python),
kept as the reference the tests and the benchmark compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cohortstream.cohort_query import intersect, resolve_subjects
from cohortstream.mongo import AsyncDatabase
from cohortstream.subject_sets import (
    ALL_SUBJECTS,
    FACETS,
    SUMMARY_FIELDS,
    decode_ids,
    encode_id,
    modality_facet,
    questionnaires_facet,
    read_sets,
    sex_facet,
    source_facet,
)

__all__ = [
    "Sex",
    "Source",
    "SubjectFilters",
    "filtered_subjects",
    "page_of_subjects",
    "page_of_summaries",
    "subject_summaries",
    "summaries_from_views",
]

Source = Literal["dicom", "redcap", "ehr"]
Sex = Literal["M", "F", "O"]

_REGISTRY = "subject_identifiers"
_IN_CHUNK = 1000


@dataclass(frozen=True)
class SubjectFilters:
    """Filters of the subject list; each one set must hold (AND), None leaves it open."""

    modality: str | None = None
    has_questionnaire: bool | None = None
    sex: Sex | None = None
    source: Source | None = None

    @property
    def empty(self) -> bool:
        return self.modality is None and self.has_questionnaire is None and self.sex is None and self.source is None

    def facets(self) -> list[str]:
        """The read model's facets every listed subject must carry."""
        found = []
        if self.modality is not None:
            found.append(modality_facet(self.modality))
        if self.source is not None:
            found.append(source_facet(self.source))
        if self.sex is not None:
            found.append(sex_facet(self.sex))
        if self.has_questionnaire is not None:
            found.append(questionnaires_facet(self.has_questionnaire))
        return found


_SUMMARY_PROJECTION = {name: 1 for name in (*SUMMARY_FIELDS, "deleted")}


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {"subject_id": str(doc["_id"]), **{name: doc.get(name) for name in SUMMARY_FIELDS}}


async def page_of_summaries(
    db: AsyncDatabase, filters: SubjectFilters, limit: int, after: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` subject summaries after ``after`` (id order), and the id to
    continue after when more follow (None: last page): the filters' sets read and
    intersected, walked from the cursor."""
    names = filters.facets() or [ALL_SUBJECTS]
    sets = await read_sets(db, names)
    ids = intersect([sets[n].subject_ids() for n in names])
    if after is not None:
        try:
            start = int(np.searchsorted(ids, np.uint64(encode_id(after)), side="right"))
        except ValueError:  # not a subject id: compare as text
            start = next((i for i, sid in enumerate(decode_ids(ids)) if sid > after), len(ids))
        ids = ids[start:]
    page = decode_ids(ids[: limit + 1])
    rows = await subject_summaries(db, page[:limit])
    return rows, (page[limit - 1] if len(page) > limit else None)


async def _field_values(db: AsyncDatabase, collection: str, query: dict[str, Any], key: str = "_id") -> list[str]:
    docs = await db[collection].find(query, {key: 1}).to_list()
    return [str(d[key]) for d in docs if d.get(key) is not None]


async def _all_subjects(db: AsyncDatabase) -> set[str]:
    return {str(s) for s in await db[_REGISTRY].distinct("subject_id")}


async def filtered_subjects(db: AsyncDatabase, filters: SubjectFilters) -> set[str]:
    """The subject ids meeting every filter (call only when ``filters`` is not empty)."""
    selected: set[str] | None = None

    def keep(found: set[str]) -> None:
        nonlocal selected
        selected = found if selected is None else selected & found

    if filters.modality is not None:
        patients = await _field_values(db, "patients", {"modalities": filters.modality})
        keep(await resolve_subjects(db, (f"dicom:{p}" for p in patients)))
    if filters.sex is not None:
        # DICOM PatientSex and the EHR's gender, both normalised to M/F/O by the sinks.
        patients = await _field_values(db, "patients", {"sex_normalised": filters.sex})
        ehr = await _field_values(db, "ehr_subjects", {"sex_normalised": filters.sex})
        keep(await resolve_subjects(db, [f"dicom:{p}" for p in patients] + ehr))
    if filters.source is not None:
        keep(set(await _field_values(db, _REGISTRY, {"kind": filters.source}, "subject_id")))
    if filters.has_questionnaire is not None:
        keys = [str(k) for k in await db["questionnaires"].distinct("subject_key")]
        with_questionnaire = await resolve_subjects(db, keys)
        keep(with_questionnaire if filters.has_questionnaire else await _all_subjects(db) - with_questionnaire)
    return selected if selected is not None else await _all_subjects(db)


async def _next_registry_subjects(db: AsyncDatabase, after: str | None, want: int) -> list[str]:
    """The first ``want`` subject ids after ``after`` in id order, read off the
    ``subject_id`` index in batches. A subject has one document per identifier; only its
    id is collected, and the next batch starts after the last id, so a batch that ends in
    the middle of a subject's identifiers loses nothing."""
    found: list[str] = []
    last = after
    batch = max(want * 4, 64)  # subjects usually have up to three identifiers: one read per page
    while len(found) < want:
        query: dict[str, Any] = {} if last is None else {"subject_id": {"$gt": last}}
        docs = await db[_REGISTRY].find(query, {"subject_id": 1, "_id": 0}).sort("subject_id", 1).limit(batch).to_list()
        for doc in docs:
            sid = str(doc["subject_id"])
            if not found or found[-1] != sid:
                found.append(sid)
        if len(docs) < batch:
            break
        last = found[-1]
    return found[:want]


async def page_of_subjects(
    db: AsyncDatabase, filters: SubjectFilters, limit: int, after: str | None
) -> tuple[list[str], bool]:
    """Up to ``limit`` subject ids after ``after`` (id order) and whether more follow,
    from the views and the registry (the former way; the list uses
    :func:`page_of_summaries`)."""
    if filters.empty:
        ids = await _next_registry_subjects(db, after, limit + 1)
    else:
        ids = sorted(s for s in await filtered_subjects(db, filters) if after is None or s > after)[: limit + 1]
    return ids[:limit], len(ids) > limit


async def _find_in(
    db: AsyncDatabase, collection: str, field: str, values: Sequence[str], projection: dict[str, int]
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for start in range(0, len(values), _IN_CHUNK):
        chunk = list(values[start : start + _IN_CHUNK])
        docs += await db[collection].find({field: {"$in": chunk}}, projection).to_list()
    return docs


async def subject_summaries(db: AsyncDatabase, subject_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One summary per subject id, in the given order (unknown ids are skipped): from
    the read model, or from the views for subjects it does not hold (yet)."""
    if not subject_ids:
        return []
    held = {
        str(d["_id"]): _summary(d)
        for d in await _find_in(db, FACETS, "_id", subject_ids, _SUMMARY_PROJECTION)
        if not d.get("deleted")
    }
    missing = [sid for sid in subject_ids if sid not in held]
    if missing:
        held.update({row["subject_id"]: row for row in await summaries_from_views(db, missing)})
    return [held[sid] for sid in subject_ids if sid in held]


async def summaries_from_views(db: AsyncDatabase, subject_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One summary per subject id computed from the views (the former way).

    Sex and age come from DICOM (PatientSex, PatientAge at the latest study) when the
    subject has imaging, else from the EHR (gender, MIMIC ``anchor_age``).
    """
    if not subject_ids:
        return []
    registry = await _find_in(db, _REGISTRY, "subject_id", subject_ids, {"subject_id": 1, "kind": 1, "value": 1})
    members: dict[str, list[dict[str, Any]]] = {}
    for doc in registry:
        members.setdefault(str(doc["subject_id"]), []).append(doc)
    dicom = [str(d["value"]) for d in registry if d["kind"] == "dicom"]
    redcap = [str(d["_id"]) for d in registry if d["kind"] == "redcap"]
    ehr = [str(d["_id"]) for d in registry if d["kind"] == "ehr"]
    patients = {
        str(d["_id"]): d
        for d in await _find_in(
            db,
            "patients",
            "_id",
            dicom,
            {"modalities": 1, "sex_normalised": 1, "age_years": 1, "study_count": 1, "series_count": 1},
        )
    }
    questionnaires: dict[str, int] = {}
    for doc in await _find_in(db, "questionnaires", "subject_key", redcap, {"subject_key": 1}):
        questionnaires[str(doc["subject_key"])] = questionnaires.get(str(doc["subject_key"]), 0) + 1
    ehr_docs = {
        str(d["_id"]): d for d in await _find_in(db, "ehr_subjects", "_id", ehr, {"sex_normalised": 1, "age_years": 1})
    }
    out = []
    for sid in subject_ids:
        docs = members.get(sid)
        if not docs:
            continue
        keys = sorted(str(d["_id"]) for d in docs)
        imaging = [patients[str(d["value"])] for d in docs if d["kind"] == "dicom" and str(d["value"]) in patients]
        ehr_of = [ehr_docs[str(d["_id"])] for d in docs if d["kind"] == "ehr" and str(d["_id"]) in ehr_docs]
        sex = next((p.get("sex_normalised") for p in imaging + ehr_of if p.get("sex_normalised")), None)
        age = next((p.get("age_years") for p in imaging + ehr_of if p.get("age_years") is not None), None)
        out.append(
            {
                "subject_id": sid,
                "identifiers": keys,
                "sources": sorted({str(d["kind"]) for d in docs}),
                "modalities": sorted({m for p in imaging for m in p.get("modalities", [])}),
                "sex": sex,
                "age_years": age,
                "study_count": sum(int(p.get("study_count") or 0) for p in imaging),
                "series_count": sum(int(p.get("series_count") or 0) for p in imaging),
                "questionnaire_count": sum(questionnaires.get(k, 0) for k in keys),
                "has_ehr": bool(ehr_of),
            }
        )
    return out

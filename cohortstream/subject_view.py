"""One subject with every modality, assembled from the per-source views: the queries
behind ``cohortstream subjects show`` and ``GET /subjects/{subject}`` (and its timeline).

The views are keyed by source identifiers (DESIGN decision 4) so that each stays
idempotent whatever order the sources arrive in; this module follows the subject
registry from a subject to its identifiers and reads, for each, the imaging
(``patients`` → their ``studies`` → their ``series``), the questionnaires and the EHR
summary, plus the EHR timeline in time order. Reads only.

The CLI prints :func:`subject_view`'s answer as JSON; the API shapes the same answer into
its response model (:func:`api.subject_models.subject_detail`) and adds each series' AI
annotations. The subject list and its filters are the API's (:mod:`api.subject_store`):
they read the read model the view sinks keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cohortstream.errors import CohortStreamError
from cohortstream.mongo import AsyncDatabase, Document
from cohortstream.subjects import SubjectIdentifier

__all__ = ["SubjectNotFoundError", "ehr_timeline", "resolve_subject_id", "subject_identifiers", "subject_view"]

_REGISTRY = "subject_identifiers"


class SubjectNotFoundError(CohortStreamError, LookupError):
    """No subject has this id or identifier."""


async def _subject_of_identifier(db: AsyncDatabase, text: str) -> str:
    """The subject id an identifier (``dicom:...``) belongs to; :class:`SubjectIdentifierError`
    when ``text`` is not an identifier, :class:`SubjectNotFoundError` when nobody has it."""
    identifier = SubjectIdentifier.parse(text)
    doc = await db[_REGISTRY].find_one({"_id": identifier.key}, {"subject_id": 1})
    if doc is None:
        raise SubjectNotFoundError(f"no subject has the identifier {identifier}")
    return str(doc["subject_id"])


async def resolve_subject_id(db: AsyncDatabase, text: str) -> str:
    """A subject id given either the id itself or one of its identifiers (``dicom:...``)."""
    if ":" in text:
        return await _subject_of_identifier(db, text)
    if await db[_REGISTRY].find_one({"subject_id": text}, {"_id": 1}) is None:
        raise SubjectNotFoundError(f"no subject {text!r}")
    return text


async def subject_identifiers(db: AsyncDatabase, subject_id: str) -> list[SubjectIdentifier]:
    """The subject's identifiers, sorted (none: no such subject)."""
    docs = await db[_REGISTRY].find({"subject_id": subject_id}).to_list()
    return sorted(SubjectIdentifier(d["kind"], d["scope"], d["value"]) for d in docs)


async def _by_ids(db: AsyncDatabase, collection: str, ids: Sequence[str]) -> list[Document]:
    """Documents by ``_id`` (one indexed ``$in``), in ``_id`` order."""
    if not ids:
        return []
    return await db[collection].find({"_id": {"$in": sorted(set(ids))}}).sort("_id").to_list()


async def subject_view(db: AsyncDatabase, subject: str) -> dict[str, Any]:
    """Everything the views hold about one subject, grouped by modality.

    ``subject`` is a subject id or one of its identifiers (``dicom:...``): one registry
    read for an id, two for an identifier. The answer::

        {"subject_id", "identifiers" (registry keys, sorted),
         "imaging": [patient + "study_detail": [study + "series_detail": [series]]],
         "questionnaires": [...], "ehr": [EHR subject summaries]}

    Lists are in ``_id`` order. Imaging is read by ``_id`` where the views allow it
    (patients → their ``studies`` → their ``series``), EHR subjects by key; questionnaires
    are found by ``subject_key`` (their ``_id`` holds event and instrument names the
    registry does not know). :class:`SubjectNotFoundError`: no such subject (or it was
    merged away between the reads); :class:`~cohortstream.subjects.SubjectIdentifierError`:
    ``subject`` is not a valid identifier.
    """
    subject_id = await _subject_of_identifier(db, subject) if ":" in subject else subject
    registry = await db[_REGISTRY].find({"subject_id": subject_id}).to_list()
    if not registry:
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    dicom = [str(d["value"]) for d in registry if d["kind"] == "dicom"]
    redcap = [str(d["_id"]) for d in registry if d["kind"] == "redcap"]
    ehr = [str(d["_id"]) for d in registry if d["kind"] == "ehr"]
    patients = await _by_ids(db, "patients", dicom)
    studies = await _by_ids(db, "studies", [s for p in patients for s in p.get("studies", [])])
    series = await _by_ids(db, "series", [s for st in studies for s in st.get("series", [])])
    for study in studies:
        study["series_detail"] = [s for s in series if s.get("study_instance_uid") == study["_id"]]
    for patient in patients:
        patient["study_detail"] = [st for st in studies if st.get("patient_id") == patient["_id"]]
    questionnaires = (
        await db["questionnaires"].find({"subject_key": {"$in": redcap}}).sort("_id").to_list() if redcap else []
    )
    return {
        "subject_id": subject_id,
        "identifiers": sorted(str(d["_id"]) for d in registry),
        "imaging": patients,
        "questionnaires": questionnaires,
        "ehr": await _by_ids(db, "ehr_subjects", ehr),
    }


async def ehr_timeline(
    db: AsyncDatabase, subject_id: str, *, limit: int = 1000, after: datetime | None = None
) -> list[dict[str, Any]]:
    """The subject's EHR facts in time order (undated facts last), at most ``limit``."""
    keys = [i.key for i in await subject_identifiers(db, subject_id) if i.kind == "ehr"]
    if not keys:
        return []
    query: dict[str, Any] = {"subject_key": {"$in": keys}}
    if after is not None:
        query["effective_at"] = {"$gt": after}
    dated = (
        await db["ehr_timeline"]
        .find({**query, "effective_at": query.get("effective_at", {"$ne": None})})
        .sort([("effective_at", 1), ("_id", 1)])
        .limit(limit)
        .to_list()
    )
    if len(dated) >= limit or after is not None:
        return list(dated)
    undated = (
        await db["ehr_timeline"]
        .find({"subject_key": {"$in": keys}, "effective_at": None})
        .sort("_id")
        .limit(limit - len(dated))
        .to_list()
    )
    return list(dated) + list(undated)

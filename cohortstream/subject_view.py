"""The patient-centric view of one subject, assembled from the per-source views.

The views are keyed by source identifiers (DESIGN decision 4) so that each stays
idempotent whatever order the sources arrive in; this module follows the subject
registry from a subject to its identifiers and reads, for each, the imaging
(``patients``/``studies``/``series``), the questionnaires and the EHR summary, plus the
EHR timeline in time order. Reads only, one indexed ``find`` per collection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase

from cohortstream.errors import CohortStreamError
from cohortstream.subjects import SubjectIdentifier

__all__ = ["SubjectNotFoundError", "ehr_timeline", "resolve_subject_id", "subject_identifiers", "subject_view"]


class SubjectNotFoundError(CohortStreamError, LookupError):
    """No subject has this id or identifier."""


async def resolve_subject_id(db: AsyncIOMotorDatabase, text: str) -> str:
    """A subject id given either the id itself or one of its identifiers (``dicom:...``)."""
    if ":" in text:
        identifier = SubjectIdentifier.parse(text)
        doc = await db["subject_identifiers"].find_one({"_id": identifier.key}, {"subject_id": 1})
        if doc is None:
            raise SubjectNotFoundError(f"no subject has the identifier {identifier}")
        return str(doc["subject_id"])
    if await db["subject_identifiers"].find_one({"subject_id": text}, {"_id": 1}) is None:
        raise SubjectNotFoundError(f"no subject {text!r}")
    return text


async def subject_identifiers(db: AsyncIOMotorDatabase, subject_id: str) -> list[SubjectIdentifier]:
    docs = await db["subject_identifiers"].find({"subject_id": subject_id}).to_list(None)
    return sorted(SubjectIdentifier(d["kind"], d["scope"], d["value"]) for d in docs)


async def _imaging(db: AsyncIOMotorDatabase, patient_ids: list[str]) -> list[dict[str, Any]]:
    if not patient_ids:
        return []
    patients = await db["patients"].find({"_id": {"$in": patient_ids}}).sort("_id").to_list(None)
    studies = await db["studies"].find({"patient_id": {"$in": patient_ids}}).sort("_id").to_list(None)
    series = await db["series"].find({"patient_id": {"$in": patient_ids}}).sort("_id").to_list(None)
    series_by_study: dict[str, list[dict[str, Any]]] = {}
    for item in series:
        series_by_study.setdefault(item["study_instance_uid"], []).append(item)
    for study in studies:
        study["series_detail"] = series_by_study.get(study["_id"], [])
    studies_by_patient: dict[str, list[dict[str, Any]]] = {}
    for study in studies:
        studies_by_patient.setdefault(study["patient_id"], []).append(study)
    for patient in patients:
        patient["study_detail"] = studies_by_patient.get(patient["_id"], [])
    return patients


async def subject_view(db: AsyncIOMotorDatabase, subject_id: str) -> dict[str, Any]:
    """Everything the views hold about one subject, grouped by modality."""
    identifiers = await subject_identifiers(db, subject_id)
    if not identifiers:
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    dicom = [i.value for i in identifiers if i.kind == "dicom"]
    redcap = [i.key for i in identifiers if i.kind == "redcap"]
    ehr = [i.key for i in identifiers if i.kind == "ehr"]
    questionnaires = (
        await db["questionnaires"].find({"subject_key": {"$in": redcap}}).sort("_id").to_list(None) if redcap else []
    )
    ehr_summary = await db["ehr_subjects"].find({"_id": {"$in": ehr}}).sort("_id").to_list(None) if ehr else []
    return {
        "subject_id": subject_id,
        "identifiers": [i.key for i in identifiers],
        "imaging": await _imaging(db, dicom),
        "questionnaires": questionnaires,
        "ehr": ehr_summary,
    }


async def ehr_timeline(
    db: AsyncIOMotorDatabase, subject_id: str, *, limit: int = 1000, after: datetime | None = None
) -> list[dict[str, Any]]:
    """The subject's EHR facts in time order (undated facts last), at most ``limit``."""
    keys = [i.key for i in await subject_identifiers(db, subject_id) if i.kind == "ehr"]
    if not keys:
        return []
    query: dict[str, Any] = {"subject_key": {"$in": keys}}
    if after is not None:
        query["effective_at"] = {"$gt": after}
    dated = await db["ehr_timeline"].find({**query, "effective_at": query.get("effective_at", {"$ne": None})}).sort(
        [("effective_at", 1), ("_id", 1)]
    ).limit(limit).to_list(None)
    if len(dated) >= limit or after is not None:
        return list(dated)
    undated = await db["ehr_timeline"].find({"subject_key": {"$in": keys}, "effective_at": None}).sort("_id").limit(
        limit - len(dated)
    ).to_list(None)
    return list(dated) + list(undated)

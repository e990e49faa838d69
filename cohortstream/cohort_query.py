"""Cross-modal cohort questions over the views: "which subjects have an MRI, a completed
baseline questionnaire and a creatinine above 1.2?".

Each criterion is answered by one indexed ``find`` with a projection on the view that
holds that modality (``patients`` for imaging, ``questionnaires`` for REDCap,
``ehr_subjects`` for labs and diagnoses); the source identifiers found are resolved to
subjects through the subject registry, and the sets are intersected in Python. Only the
MongoDB API subset of DESIGN.md is used: no ``$lookup``, no aggregation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from motor.motor_asyncio import AsyncIOMotorDatabase
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cohortstream.events import RedcapCompletionStatus
from cohortstream.mongo import safe_key

__all__ = [
    "CohortQuery",
    "CohortResult",
    "DiagnosisCriterion",
    "LabCriterion",
    "QuestionnaireCriterion",
    "resolve_subjects",
    "run_cohort_query",
]

_RESOLVE_CHUNK = 1000


class _Criterion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuestionnaireCriterion(_Criterion):
    """A REDCap instrument in a given completion status (in one event, or any)."""

    instrument: str = Field(min_length=1, description="Unique instrument name.")
    event_name: str | None = Field(None, description="Unique event name; any event when absent.")
    status: RedcapCompletionStatus = Field(RedcapCompletionStatus.COMPLETE, description="Completion status.")
    project_id: str | None = Field(None, description="REDCap project id; any configured project when absent.")

    def label(self) -> str:
        where = f"@{self.event_name}" if self.event_name else ""
        return f"questionnaire {self.instrument}{where} {self.status.value}"


class LabCriterion(_Criterion):
    """The latest value of a lab item within a range (bounds inclusive)."""

    code: str = Field(min_length=1, description="Lab code as the source writes it (MIMIC itemid, LOINC code).")
    source: str | None = Field(None, description="EHR source; any source when absent.")
    min: float | None = Field(None, description="Lowest accepted value.")
    max: float | None = Field(None, description="Highest accepted value.")

    @model_validator(mode="after")
    def _has_a_sane_range(self) -> LabCriterion:
        if self.min is None and self.max is None:
            raise ValueError(f"lab criterion for code {self.code!r} needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"lab criterion for code {self.code!r}: min {self.min} is above max {self.max}")
        return self

    def label(self) -> str:
        return f"lab {self.code} in [{self.min if self.min is not None else '-inf'}, {self.max if self.max is not None else 'inf'}]"


class DiagnosisCriterion(_Criterion):
    """A diagnosis whose code starts with a prefix (``I10``, ``E11``, ``250``)."""

    code_prefix: str = Field(min_length=1, description="Start of the diagnosis code.")
    source: str | None = Field(None, description="EHR source; any source when absent.")

    def label(self) -> str:
        return f"diagnosis {self.code_prefix}*"


class CohortQuery(BaseModel):
    """Every criterion must hold (AND). An empty query selects every registered subject."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: list[str] = Field(default_factory=list, description="DICOM modalities the subject must have, e.g. MR.")
    questionnaires: list[QuestionnaireCriterion] = Field(default_factory=list)
    labs: list[LabCriterion] = Field(default_factory=list)
    diagnoses: list[DiagnosisCriterion] = Field(default_factory=list)


@dataclass(frozen=True)
class CohortResult:
    """The subjects that meet every criterion, and how many meet each one alone."""

    subject_ids: list[str]
    per_criterion: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.subject_ids)


async def _keys(db: AsyncIOMotorDatabase, collection: str, query: dict[str, Any], key_field: str) -> set[str]:
    docs = await db[collection].find(query, {key_field: 1}).to_list(None)
    return {str(d[key_field]) for d in docs if d.get(key_field) is not None}


async def resolve_subjects(db: AsyncIOMotorDatabase, keys: Iterable[str]) -> set[str]:
    """The subject ids of these identifier keys (unregistered keys are ignored)."""
    wanted = sorted(set(keys))
    subjects: set[str] = set()
    for start in range(0, len(wanted), _RESOLVE_CHUNK):
        chunk = wanted[start : start + _RESOLVE_CHUNK]
        docs = await db["subject_identifiers"].find({"_id": {"$in": chunk}}, {"subject_id": 1}).to_list(None)
        subjects.update(str(d["subject_id"]) for d in docs)
    return subjects


async def _modality(db: AsyncIOMotorDatabase, modality: str) -> set[str]:
    patient_ids = await _keys(db, "patients", {"modalities": modality}, "_id")
    return {f"dicom:{pid}" for pid in patient_ids}


async def _questionnaire(db: AsyncIOMotorDatabase, criterion: QuestionnaireCriterion) -> set[str]:
    query: dict[str, Any] = {"instrument": criterion.instrument, "completion_status": criterion.status.value}
    if criterion.event_name is not None:
        query["event_name"] = criterion.event_name
    if criterion.project_id is not None:
        query["project_id"] = criterion.project_id
    return await _keys(db, "questionnaires", query, "subject_key")


async def _lab(db: AsyncIOMotorDatabase, criterion: LabCriterion) -> set[str]:
    value_range: dict[str, float] = {}
    if criterion.min is not None:
        value_range["$gte"] = criterion.min
    if criterion.max is not None:
        value_range["$lte"] = criterion.max
    query: dict[str, Any] = {f"latest_labs.{safe_key(criterion.code)}.value": value_range}
    if criterion.source is not None:
        query["source"] = criterion.source
    return await _keys(db, "ehr_subjects", query, "_id")


async def _diagnosis(db: AsyncIOMotorDatabase, criterion: DiagnosisCriterion) -> set[str]:
    query: dict[str, Any] = {"diagnosis_codes": {"$regex": "^" + re.escape(criterion.code_prefix)}}
    if criterion.source is not None:
        query["source"] = criterion.source
    return await _keys(db, "ehr_subjects", query, "_id")


async def run_cohort_query(db: AsyncIOMotorDatabase, query: CohortQuery) -> CohortResult:
    """Answer ``query`` from the views; subject ids sorted."""
    per_criterion: dict[str, int] = {}
    selected: set[str] | None = None
    criteria: list[tuple[str, Callable[[], Awaitable[set[str]]]]] = [
        (f"modality {m}", functools.partial(_modality, db, m)) for m in query.modalities
    ]
    criteria += [(c.label(), functools.partial(_questionnaire, db, c)) for c in query.questionnaires]
    criteria += [(c.label(), functools.partial(_lab, db, c)) for c in query.labs]
    criteria += [(c.label(), functools.partial(_diagnosis, db, c)) for c in query.diagnoses]
    for label, source_keys in criteria:
        subjects = await resolve_subjects(db, await source_keys())
        per_criterion[label] = len(subjects)
        selected = subjects if selected is None else selected & subjects
    if selected is None:
        selected = {str(s) for s in await db["subject_identifiers"].distinct("subject_id")}
    return CohortResult(sorted(selected), per_criterion)

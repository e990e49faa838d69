"""Cross-modal cohort questions over the views: "which subjects have an MRI, a completed
baseline questionnaire and a creatinine above 1.2?".

:func:`run_cohort_query` answers from the subject sets the view sinks keep
(:mod:`consumers.subject_facets`): every criterion names one set (a facet such as
``modality:MR``, or a lab code's set with the latest values, filtered to the range),
all of them are read with **one** indexed ``find`` as packed sorted arrays of subject
ids, and intersected in memory, smallest first; a criterion's count is the size of its
set. Nothing is scanned, no count runs over an index, and no subject id is resolved
through the registry. (A diagnosis prefix longer than the prefix facets also reads the
diagnosis codes of its candidates.)

:func:`run_cohort_query_on_views` is the former way, kept as the reference the read
model is tested and benchmarked against: one indexed ``find`` per criterion on the view
that holds that modality, source identifiers resolved through the registry, sets
intersected in Python. Only the MongoDB API subset of DESIGN.md is used: no
``$lookup``, no aggregation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cohortstream.events import RedcapCompletionStatus
from cohortstream.mongo import AsyncDatabase, safe_key
from cohortstream.subject_sets import (
    DIAGNOSIS_PREFIX_MAX,
    FACETS,
    decode_ids,
    diagnosis_facet,
    encode_id,
    lab_set,
    modality_facet,
    questionnaire_facet,
    read_sets,
)

__all__ = [
    "CohortQuery",
    "CohortResult",
    "DiagnosisCriterion",
    "LabCriterion",
    "QuestionnaireCriterion",
    "condition_members",
    "facet_conditions",
    "intersect",
    "resolve_subjects",
    "run_cohort_query",
    "run_cohort_query_on_views",
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


async def _keys(db: AsyncDatabase, collection: str, query: dict[str, Any], key_field: str) -> set[str]:
    docs = await db[collection].find(query, {key_field: 1}).to_list()
    return {str(d[key_field]) for d in docs if d.get(key_field) is not None}


async def resolve_subjects(db: AsyncDatabase, keys: Iterable[str]) -> set[str]:
    """The subject ids of these identifier keys (unregistered keys are ignored)."""
    wanted = sorted(set(keys))
    subjects: set[str] = set()
    for start in range(0, len(wanted), _RESOLVE_CHUNK):
        chunk = wanted[start : start + _RESOLVE_CHUNK]
        docs = await db["subject_identifiers"].find({"_id": {"$in": chunk}}, {"subject_id": 1}).to_list()
        subjects.update(str(d["subject_id"]) for d in docs)
    return subjects


async def _modality(db: AsyncDatabase, modality: str) -> set[str]:
    patient_ids = await _keys(db, "patients", {"modalities": modality}, "_id")
    return {f"dicom:{pid}" for pid in patient_ids}


async def _questionnaire(db: AsyncDatabase, criterion: QuestionnaireCriterion) -> set[str]:
    query: dict[str, Any] = {"instrument": criterion.instrument, "completion_status": criterion.status.value}
    if criterion.event_name is not None:
        query["event_name"] = criterion.event_name
    if criterion.project_id is not None:
        query["project_id"] = criterion.project_id
    return await _keys(db, "questionnaires", query, "subject_key")


async def _lab(db: AsyncDatabase, criterion: LabCriterion) -> set[str]:
    value_range: dict[str, float] = {}
    if criterion.min is not None:
        value_range["$gte"] = criterion.min
    if criterion.max is not None:
        value_range["$lte"] = criterion.max
    query: dict[str, Any] = {f"latest_labs.{safe_key(criterion.code)}.value": value_range}
    if criterion.source is not None:
        query["source"] = criterion.source
    return await _keys(db, "ehr_subjects", query, "_id")


async def _diagnosis(db: AsyncDatabase, criterion: DiagnosisCriterion) -> set[str]:
    query: dict[str, Any] = {"diagnosis_codes": {"$regex": "^" + re.escape(criterion.code_prefix)}}
    if criterion.source is not None:
        query["source"] = criterion.source
    return await _keys(db, "ehr_subjects", query, "_id")


async def run_cohort_query_on_views(db: AsyncDatabase, query: CohortQuery) -> CohortResult:
    """Answer ``query`` from the per-source views (the former way); subject ids sorted."""
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


# --- the read model's way ---------------------------------------------------------------


@dataclass(frozen=True)
class FacetCondition:
    """One criterion as sets of the read model: the subjects of ``facet``'s set, or of
    ``lab``'s set whose value lies in [``low``, ``high``]; ``dx_regex``: a diagnosis
    prefix longer than the prefix facets, checked on the candidates' ``dx_codes``."""

    label: str
    facet: str | None = None
    lab: str | None = None
    low: float | None = None
    high: float | None = None
    dx_regex: str | None = None

    @property
    def set_name(self) -> str:
        name = self.facet if self.facet is not None else self.lab
        assert name is not None
        return name


def _diagnosis_condition(criterion: DiagnosisCriterion) -> FacetCondition:
    prefix = criterion.code_prefix
    facet = diagnosis_facet(prefix[:DIAGNOSIS_PREFIX_MAX], criterion.source)
    if len(prefix) <= DIAGNOSIS_PREFIX_MAX:
        return FacetCondition(criterion.label(), facet=facet)
    source = "[^|]*" if criterion.source is None else re.escape(criterion.source)
    return FacetCondition(criterion.label(), facet=facet, dx_regex=f"^{source}\\|{re.escape(prefix)}")


def facet_conditions(query: CohortQuery) -> list[FacetCondition]:
    """The query's criteria as conditions on the read model, in the query's order."""
    conditions = [FacetCondition(f"modality {m}", facet=modality_facet(m)) for m in query.modalities]
    conditions += [
        FacetCondition(q.label(), facet=questionnaire_facet(q.instrument, q.status.value, q.event_name, q.project_id))
        for q in query.questionnaires
    ]
    conditions += [
        FacetCondition(c.label(), lab=lab_set(safe_key(c.code), c.source), low=c.min, high=c.max) for c in query.labs
    ]
    conditions += [_diagnosis_condition(c) for c in query.diagnoses]
    return conditions


async def _with_diagnosis(db: AsyncDatabase, candidates: np.ndarray, pattern: str) -> np.ndarray:
    """The candidates whose ``dx_codes`` match ``pattern`` (read by ``_id``)."""
    regex = re.compile(pattern)
    kept: list[str] = []
    ids = decode_ids(candidates)
    for start in range(0, len(ids), _RESOLVE_CHUNK):
        docs = await db[FACETS].find({"_id": {"$in": ids[start : start + _RESOLVE_CHUNK]}}, {"dx_codes": 1}).to_list()
        kept += [str(d["_id"]) for d in docs if any(regex.match(str(c)) for c in d.get("dx_codes") or [])]
    return np.array(sorted(encode_id(k) for k in kept), dtype=np.uint64)


async def condition_members(db: AsyncDatabase, conditions: Sequence[FacetCondition]) -> list[np.ndarray]:
    """Per condition, the sorted encoded ids of the subjects meeting it alone (the sets
    read in one ``find``; a long diagnosis prefix checked on the candidates' codes)."""
    sets = await read_sets(db, [c.set_name for c in conditions])
    members = []
    for condition in conditions:
        found = sets[condition.set_name]
        ids = found.within(condition.low, condition.high) if condition.lab is not None else found.subject_ids()
        if condition.dx_regex is not None:
            ids = await _with_diagnosis(db, ids, condition.dx_regex)
        members.append(ids)
    return members


def intersect(members: Sequence[np.ndarray]) -> np.ndarray:
    """The ids in every array (sorted, distinct), smallest arrays first."""
    ordered = sorted(members, key=len)
    result = ordered[0]
    for other in ordered[1:]:
        if not len(result):
            break
        result = np.intersect1d(result, other, assume_unique=True)
    return result


async def run_cohort_query(db: AsyncDatabase, query: CohortQuery) -> CohortResult:
    """Answer ``query`` from the read model's subject sets; subject ids sorted."""
    conditions = facet_conditions(query)
    if not conditions:  # every registered subject
        return CohortResult(sorted(str(s) for s in await db["subject_identifiers"].distinct("subject_id")), {})
    members = await condition_members(db, conditions)
    per_criterion = {c.label: len(m) for c, m in zip(conditions, members, strict=True)}
    return CohortResult(decode_ids(intersect(members)), per_criterion)

"""The ``subject_facets`` read model on the real MongoDB-wire server, through the real sinks.

A small generated cohort (imaging, questionnaires, EHR labs and diagnoses, linked by the
REDCap rules) goes through the DICOM, REDCap and EHR view sinks; then the read model must
give the same answers as the views the former way (cohort queries, list filters,
summaries), its counts must equal indexed counts, paging by modality must return every
subject once, and a merge of two subjects must leave no document of the vanished ids.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.subject_store import (
    SubjectFilters,
    filtered_subjects,
    page_of_summaries,
    subject_summaries,
    summaries_from_views,
)
from cohortstream.cohort_query import (
    CohortQuery,
    DiagnosisCriterion,
    LabCriterion,
    QuestionnaireCriterion,
    run_cohort_query,
    run_cohort_query_on_views,
)
from cohortstream.events import (
    DicomInstanceReceived,
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
)
from cohortstream.settings import Settings, SubjectLinkRule
from cohortstream.subject_sets import FACETS, SETS, SubjectSet, decode_ids, memberships
from cohortstream.subjects import SubjectIdentifier
from consumers.dicom_views import DicomViews
from consumers.ehr_views import EhrViews
from consumers.redcap_views import RedcapViews
from consumers.subject_facets import rebuild_subject_facets
from consumers.subject_registry import SubjectRegistry
from tests.examples import example_events

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
REDCAP_URL = "https://redcap.example.org/"
N = 36
MODALITIES = ("MR", "CT", "PT")
STATUSES = (RedcapCompletionStatus.COMPLETE, RedcapCompletionStatus.INCOMPLETE, RedcapCompletionStatus.UNVERIFIED)


@pytest.fixture
def settings(stack_settings: Settings) -> Settings:
    return stack_settings.model_copy(
        update={
            "subject_link_rules": [
                SubjectLinkRule(redcap_field="mrn", target="dicom_patient_id"),
                SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id", ehr_source="mimic-iv"),
            ]
        }
    )


@pytest.fixture
async def sinks(settings: Settings, db: Any) -> AsyncIterator[tuple[DicomViews, RedcapViews, EhrViews]]:
    dicom, redcap, ehr = DicomViews(settings), RedcapViews(settings), EhrViews(settings)
    for sink in (dicom, redcap, ehr):
        await sink.setup()
    yield dicom, redcap, ehr
    for sink in (dicom, redcap, ehr):
        await sink.close()


def _dicom(patient: str, modality: str, series: int, sex: str, age: int) -> DicomInstanceReceived:
    template = next(e for e in example_events() if isinstance(e, DicomInstanceReceived))
    study = f"1.2.826.0.1.3680043.8.498.91.{zlib.crc32(patient.encode())}"
    return template.model_copy(
        update={
            "patient_id": patient,
            "study_instance_uid": study,
            "series_instance_uid": f"{study}.{series}",
            "sop_instance_uid": f"{study}.{series}.1",
            "modality": modality,
            "patient_sex": sex,
            "patient_age": f"{age:03d}Y",
            "received_at": T0 + timedelta(minutes=series),
        }
    )


def _redcap(
    record: str, instrument: str, event: str, status: RedcapCompletionStatus, values: dict[str, Any]
) -> RedcapRecordChanged:
    return RedcapRecordChanged(
        redcap_url=REDCAP_URL,
        project_id="42",
        record_id=record,
        event_name=event,
        instrument=instrument,
        completion_status=status,
        trigger=RedcapTrigger.FULL_SYNC,
        values=values,
        emitted_at=T0,
        producer="test",
    )


def _ehr(subject: str, sex: str, age: int, labs: dict[str, float], diagnoses: list[str]) -> list[EhrRecord]:
    common = {"source": "mimic-iv", "subject_id": subject, "emitted_at": T0, "producer": "test"}
    rows = [
        EhrRecord(
            **common,
            source_file="patients.csv",
            source_row_id=f"p{subject}",
            record_type=EhrRecordType.PATIENT,
            attributes={"gender": sex, "anchor_age": str(age)},
        )
    ]
    for i, (code, value) in enumerate(sorted(labs.items())):
        rows.append(
            EhrRecord(
                **common,
                source_file="labevents.csv",
                source_row_id=f"l{subject}-{i}",
                record_type=EhrRecordType.LAB,
                effective_at=T0 - timedelta(days=1),
                code=code,
                value_number=value,
                unit="mg/dL",
            )
        )
    for i, code in enumerate(diagnoses):
        rows.append(
            EhrRecord(
                **common,
                source_file="diagnoses_icd.csv",
                source_row_id=f"d{subject}-{i}",
                record_type=EhrRecordType.DIAGNOSIS,
                effective_at=T0 - timedelta(days=3),
                code=code,
            )
        )
    return rows


async def _fill(sinks: tuple[DicomViews, RedcapViews, EhrViews]) -> None:
    """Subject n: imaging unless n % 4 == 3, a REDCap record unless n % 6 == 5 (linked to
    its PatientID and EHR subject), an EHR extract unless n % 5 == 4; in several batches,
    sources in mixed order, so links arrive before and after the views they join."""
    dicom, redcap, ehr = sinks
    rng = random.Random(11)
    images, records, extracts = [], [], []
    for n in range(N):
        if n % 4 != 3:
            for k in range(1 + n % 3):
                images.append(_dicom(f"P{n:03d}", MODALITIES[(n + k) % 3], k, "F" if n % 2 else "M", 20 + n))
        if n % 6 != 5:
            values = {"mrn": f"P{n:03d}", "ehr_id": f"{10_000 + n}" if n % 5 != 4 else ""}
            for event in ("baseline_arm_1", "followup_1_arm_1"):
                records.append(_redcap(f"R{n:03d}", "baseline", event, STATUSES[(n + len(event)) % 3], values))
        if n % 5 != 4:
            labs = {"50912": round(rng.uniform(0.3, 3.0), 2), "51221": round(rng.uniform(25, 50), 1)}
            extracts += _ehr(
                f"{10_000 + n}",
                "F" if n % 2 else "M",
                19 + n,
                labs,
                ["I10" if n % 3 != 2 else "E119", "I2510"][: 1 + n % 2],
            )
    for start in range(0, max(len(images), len(records), len(extracts)), 20):
        await ehr.apply(extracts[start : start + 20])
        await dicom.apply(images[start : start + 20])
        await redcap.apply(records[start : start + 20])


async def _assert_sets_are_exact(db: Any) -> None:
    """Every set holds exactly the subjects (and lab values) the documents say, and no
    document is left pending or as a tombstone."""
    docs = await db[FACETS].find().to_list(None)
    assert not [d["_id"] for d in docs if "pending" in d or d.get("deleted")]
    expected: dict[str, list[tuple[str, float]]] = {}
    for doc in docs:
        for name, values in memberships(doc).items():
            expected.setdefault(name, []).extend((doc["_id"], v) for v in (values or [0.0]))
    stored: dict[str, list[tuple[str, float]]] = {}
    for shard in await db[SETS].find().sort("_id").to_list(None):
        found = SubjectSet.from_doc(shard)
        values = found.values.tolist() if found.values is not None else [0.0] * len(found.ids)
        assert shard["n"] == len(set(found.ids.tolist()))
        if len(found.ids):
            stored.setdefault(shard["set"], []).extend(zip(decode_ids(found.ids), values, strict=True))
    assert {n: sorted(v) for n, v in stored.items()} == {n: sorted(v) for n, v in expected.items()}


async def _assert_matches_registry(db: Any) -> None:
    subjects = sorted(await db["subject_identifiers"].distinct("subject_id"))
    assert sorted(d["_id"] for d in await db[FACETS].find({}, {"_id": 1}).to_list(None)) == subjects
    assert await subject_summaries(db, subjects) == await summaries_from_views(db, subjects)
    await _assert_sets_are_exact(db)


QUERIES = [
    CohortQuery(modalities=["PT"]),
    CohortQuery(modalities=["MR", "CT"]),
    CohortQuery(
        modalities=["PT"],
        questionnaires=[QuestionnaireCriterion(instrument="baseline", event_name="baseline_arm_1")],
        labs=[LabCriterion(code="50912", min=1.2)],
        diagnoses=[DiagnosisCriterion(code_prefix="I1")],
    ),
    CohortQuery(
        questionnaires=[
            QuestionnaireCriterion(instrument="baseline", status=RedcapCompletionStatus.INCOMPLETE, project_id="42")
        ]
    ),
    CohortQuery(
        labs=[LabCriterion(code="50912", min=0.5, max=2.0, source="mimic-iv"), LabCriterion(code="51221", max=40)]
    ),
    CohortQuery(
        diagnoses=[DiagnosisCriterion(code_prefix="I2510"), DiagnosisCriterion(code_prefix="E119", source="mimic-iv")]
    ),
    CohortQuery(diagnoses=[DiagnosisCriterion(code_prefix="I25100000")]),  # longer than the prefix facets
    CohortQuery(modalities=["US"]),
    CohortQuery(),
]


async def test_the_read_model_answers_as_the_views_do(sinks: tuple[DicomViews, RedcapViews, EhrViews], db: Any) -> None:
    await _fill(sinks)
    await _assert_matches_registry(db)
    answers = []
    for query in QUERIES:
        new, old = await run_cohort_query(db, query), await run_cohort_query_on_views(db, query)
        assert (new.subject_ids, new.per_criterion) == (old.subject_ids, old.per_criterion), query
        answers.append(new.count)
    assert answers[0] > 0 and answers[2] > 0 and answers[-2] == 0  # the cohort makes the queries meaningful

    for filters in (
        SubjectFilters(modality="MR"),
        SubjectFilters(sex="F", has_questionnaire=True),
        SubjectFilters(has_questionnaire=False),
        SubjectFilters(source="ehr", modality="CT"),
        SubjectFilters(),
    ):
        expected = (
            sorted(await filtered_subjects(db, filters))
            if not filters.empty
            else sorted(await db["subject_identifiers"].distinct("subject_id"))
        )
        seen: list[str] = []
        after = None
        for _ in range(N):
            rows, after = await page_of_summaries(db, filters, 4, after)
            seen += [r["subject_id"] for r in rows]
            if after is None:
                break
        assert seen == expected, filters  # every subject once, in id order
    # a replay changes nothing; a rebuild from the views gives the same documents
    before = await db[FACETS].find().sort("_id").to_list(None)
    await _fill(sinks)
    assert await db[FACETS].find().sort("_id").to_list(None) == before
    sets = await db[SETS].find({"n": {"$gt": 0}}, {"v": 0}).sort("_id").to_list(None)  # not the emptied shards
    await db[FACETS].delete_many({})
    await db[SETS].delete_many({})
    await rebuild_subject_facets(sinks[0])
    assert await db[FACETS].find().sort("_id").to_list(None) == before
    assert await db[SETS].find({"n": {"$gt": 0}}, {"v": 0}).sort("_id").to_list(None) == sets
    await _assert_sets_are_exact(db)


async def test_a_merge_leaves_no_document_of_the_vanished_subjects(
    sinks: tuple[DicomViews, RedcapViews, EhrViews], db: Any
) -> None:
    dicom, redcap, ehr = sinks
    await dicom.apply([_dicom("PM1", "MR", 1, "F", 50)])
    await ehr.apply(_ehr("20001", "F", 49, {"50912": 2.2}, ["I10"]))
    registry = dicom.registry
    before = {
        await registry.subject_of(SubjectIdentifier.dicom("PM1")),
        await registry.subject_of(SubjectIdentifier.ehr("mimic-iv", "20001")),
    }
    assert len(before) == 2 and sorted(d["_id"] for d in await db[FACETS].find().to_list(None)) == sorted(before)
    # A REDCap record whose fields link it to both: one subject of three identifiers.
    await redcap.apply(
        [
            _redcap(
                "RM1", "baseline", "baseline_arm_1", RedcapCompletionStatus.COMPLETE, {"mrn": "PM1", "ehr_id": "20001"}
            )
        ]
    )
    merged = await registry.subject_of(SubjectIdentifier.dicom("PM1"))
    assert merged == await registry.subject_of(SubjectIdentifier.ehr("mimic-iv", "20001"))
    (vanished,) = before - {merged}  # the id follows the smallest key (dicom:PM1): the EHR subject's id is gone
    (doc,) = await db[FACETS].find().to_list(None)
    assert doc["_id"] == merged != vanished and doc["sources"] == ["dicom", "ehr", "redcap"]
    assert (doc["modalities"], doc["questionnaire_count"], doc["has_ehr"]) == (["MR"], 1, True)
    await _assert_matches_registry(db)
    query = CohortQuery(
        modalities=["MR"],
        labs=[LabCriterion(code="50912", min=2)],
        diagnoses=[DiagnosisCriterion(code_prefix="I")],
        questionnaires=[QuestionnaireCriterion(instrument="baseline")],
    )
    assert (await run_cohort_query(db, query)).subject_ids == [merged]


async def test_agents_refreshing_the_same_subjects_at_once_leave_exact_sets(
    sinks: tuple[DicomViews, RedcapViews, EhrViews], settings: Settings, db: Any
) -> None:
    dicom, redcap, ehr = sinks
    # Each agent has its own sink (and connection), as in the worker.
    others = (DicomViews(settings), RedcapViews(settings), EhrViews(settings))
    for sink in others:
        await sink.setup()
    try:
        links = [
            _redcap(f"RC{n}", "baseline", "baseline_arm_1", STATUSES[n % 3], {"mrn": f"PC{n}", "ehr_id": f"3000{n}"})
            for n in range(12)
        ]
        images = [_dicom(f"PC{n}", MODALITIES[n % 3], k, "F", 40 + n) for n in range(12) for k in range(2)]
        extracts = [r for n in range(12) for r in _ehr(f"3000{n}", "F", 39 + n, {"50912": 0.5 + n / 4}, ["I10"])]
        await asyncio.gather(
            redcap.apply(links[:6]),
            others[1].apply(links[6:]),
            dicom.apply(images[::2]),
            others[0].apply(images[1::2]),
            ehr.apply(extracts[: len(extracts) // 2]),
            others[2].apply(extracts[len(extracts) // 2 :]),
        )
    finally:
        for sink in others:
            await sink.close()
    await _assert_matches_registry(db)
    assert len(await db["subject_identifiers"].distinct("subject_id")) == 12
    query = CohortQuery(labs=[LabCriterion(code="50912", min=2)], diagnoses=[DiagnosisCriterion(code_prefix="I10")])
    new, old = await run_cohort_query(db, query), await run_cohort_query_on_views(db, query)
    assert (new.subject_ids, new.per_criterion) == (old.subject_ids, old.per_criterion) and new.count == 6


async def test_a_merge_whose_report_was_lost_is_repaired_by_the_next_batch(
    sinks: tuple[DicomViews, RedcapViews, EhrViews], settings: Settings, db: Any
) -> None:
    """A link made outside the sinks (``cohortstream subjects link``, or a worker killed
    between the merge and the refresh): the next batch of the subject finds the document
    left under the old id by its identifiers and removes it."""
    dicom, _, ehr = sinks
    await dicom.apply([_dicom("PL1", "CT", 1, "M", 61)])
    await ehr.apply(_ehr("40001", "M", 60, {"50912": 1.1}, ["E119"]))
    registry = SubjectRegistry(settings)
    await registry.setup()
    try:
        merged = await registry.link(SubjectIdentifier.dicom("PL1"), SubjectIdentifier.ehr("mimic-iv", "40001"), "test")
    finally:
        await registry.close()
    assert len(await db[FACETS].find().to_list(None)) == 2  # stale until a sink sees the subject
    await dicom.apply([_dicom("PL1", "CT", 2, "M", 61)])
    (doc,) = await db[FACETS].find().to_list(None)
    assert doc["_id"] == merged and doc["sources"] == ["dicom", "ehr"] and doc["series_count"] == 2
    await _assert_matches_registry(db)

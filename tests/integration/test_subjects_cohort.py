"""Linkage and cross-modal cohort queries on the real stack.

A synthetic cohort arrives the way it would in production: questionnaires through a full
REDCap sync (against the API simulator) into Kafka, a MIMIC-IV-shaped EHR extract through
``ehr load`` into Kafka, both folded into the views by the worker's agents; imaging
through the DICOM view sink. The link rules join each REDCap record to its DICOM
PatientID (field ``mrn``) and its MIMIC subject (field ``ehr_id``). The cohort query's
answer is checked against the answer computed here from the generated files, and a
second worker that replays both topics into a fresh database builds identical views.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cohortstream.admin import ensure_topics
from cohortstream.cohort_query import (
    CohortQuery,
    DiagnosisCriterion,
    LabCriterion,
    QuestionnaireCriterion,
    run_cohort_query,
)
from cohortstream.events import DicomInstanceReceived
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.publisher import EventPublisher
from cohortstream.settings import RedcapProject, Settings, SubjectLinkRule
from cohortstream.subject_view import ehr_timeline, resolve_subject_id, subject_view
from cohortstream.subjects import SubjectIdentifier
from cohortstream.synthetic_ehr import write_mimic
from consumers.dicom_views import DicomViews
from consumers.subject_registry import SubjectLinkConflict, SubjectRegistry
from producers.ehr.loader import publish_extract
from producers.redcap.api import RedcapApiClient
from producers.redcap.sync import sync_project
from streams.worker import build_worker_app
from tests.examples import example_events
from tests.polling import eventually
from tests.redcap_simulator import (
    RedcapSimulator,
    SimProject,
    cohort_metadata,
    meta,
    new_token,
    running_simulator,
)
from tests.views_snapshot import views_snapshot

REDCAP_URL = "https://redcap.example.org/"
SUBJECTS = 40
CREATININE = "50912"
VIEW_COLLECTIONS = ("questionnaires", "ehr_timeline", "ehr_subjects", "subject_identifiers")


def _dicom_id(n: int) -> str | None:
    return f"P{n:04d}" if n % 4 != 3 else None  # three in four subjects have imaging


def _mimic_id(n: int) -> int | None:
    return 10_000_000 + n if n % 5 != 4 else None  # four in five have an EHR extract


def _modality(n: int) -> str:
    return "MR" if n % 2 == 0 else "CT"


def _redcap_project(token: str) -> SimProject:
    metadata = cohort_metadata()
    metadata.insert(2, meta("ehr_id", "demographics", "text", "Hospital subject id", identifier="y"))
    project = SimProject(
        token=token, project_id="42", metadata=metadata, events=["baseline_arm_1", "followup_1_arm_1"], repeating=True
    )
    for n in range(SUBJECTS):
        base = {"record_id": f"R{n:03d}", "redcap_repeat_instrument": "", "redcap_repeat_instance": ""}
        mimic = _mimic_id(n)
        project.records.append(
            {
                **base,
                "redcap_event_name": "baseline_arm_1",
                "mrn": _dicom_id(n) or f"NOIMG{n}",
                "ehr_id": str(mimic) if mimic else "",
                "sex": "1" if n % 2 else "2",
                "demographics_complete": "2",
                "visit_date": "2024-03-01",
                "smoker": str(n % 2),
                "baseline_complete": "2" if n % 3 == 0 else "1",
            }
        )
    return project


@pytest.fixture
def sim() -> Iterator[tuple[RedcapSimulator, str]]:
    token = new_token()
    with running_simulator(_redcap_project(token)) as simulator:
        yield simulator, token


@pytest.fixture
def settings(stack_settings: Settings, sim: tuple[RedcapSimulator, str]) -> Settings:
    simulator, token = sim
    return stack_settings.model_copy(
        update={
            "redcap_projects": [
                RedcapProject(
                    redcap_url=REDCAP_URL, project_id="42", api_token=SecretStr(token), api_url=simulator.api_url
                )
            ],
            "subject_link_rules": [
                SubjectLinkRule(redcap_field="mrn", target="dicom_patient_id"),
                SubjectLinkRule(redcap_field="ehr_id", target="ehr_subject_id", ehr_source="mimic-iv"),
            ],
        }
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Any]:
    await ensure_topics(settings)  # before any worker starts: faust ignores missing topics
    client = mongo_client(settings)
    yield mongo_database(client, settings)
    await client.drop_database(settings.mongo_database)
    await client.close()


def _imaging_events() -> list[DicomInstanceReceived]:
    template = example_events()[0]
    assert isinstance(template, DicomInstanceReceived)
    events = []
    for n in range(SUBJECTS):
        patient = _dicom_id(n)
        if patient is None:
            continue
        study = f"1.2.826.0.1.3680043.8.498.{n + 1}"
        events.append(
            template.model_copy(
                update={
                    "patient_id": patient,
                    "study_instance_uid": study,
                    "series_instance_uid": f"{study}.1",
                    "sop_instance_uid": f"{study}.1.1",
                    "modality": _modality(n),
                }
            )
        )
    return events


def _expected_latest(root: Path, itemid: str) -> dict[int, float]:
    """Latest value of ``itemid`` per MIMIC subject, straight from the CSV."""
    latest: dict[int, tuple[datetime, int, float]] = {}
    with (root / "hosp" / "labevents.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["itemid"] != itemid or not row["valuenum"]:
                continue
            key = (datetime.fromisoformat(row["charttime"]), int(row["labevent_id"]), float(row["valuenum"]))
            subject = int(row["subject_id"])
            # The views break ties between equal times by row id as text, as the sink does.
            if subject not in latest or (key[0], str(key[1])) > (latest[subject][0], str(latest[subject][1])):
                latest[subject] = key
    return {subject: value for subject, (_, _, value) in latest.items()}


def _expected_diagnosed(root: Path, prefix: str) -> set[int]:
    with (root / "hosp" / "diagnoses_icd.csv").open(newline="") as handle:
        return {int(r["subject_id"]) for r in csv.DictReader(handle) if r["icd_code"].startswith(prefix)}


async def _snapshot(db: Any) -> dict[str, list[dict[str, Any]]]:
    return await views_snapshot(db, VIEW_COLLECTIONS)


async def _load_everything(settings: Settings, sim: RedcapSimulator, tmp_path: Path) -> tuple[Path, int, int]:
    extract = write_mimic(
        tmp_path / "ehr",
        seed=11,
        subject_ids=[m for n in range(SUBJECTS) if (m := _mimic_id(n)) is not None],
        labs_per_admission=(8, 16),
    )
    report = await publish_extract(settings, extract.root)
    project = settings.redcap_projects[0]
    async with EventPublisher(settings) as publisher, RedcapApiClient(settings, project) as client:
        sync = await sync_project(settings, project, publisher, client)
    return extract.root, report.totals().published, sync.events


async def _views_filled(db: Any, ehr_events: int, redcap_events: int) -> bool:
    """Both agents done: every row in the timeline and every questionnaire stored (each
    sink writes those last), and every REDCap record linked (one subject per record)."""
    return (
        await db.ehr_timeline.count_documents({}) == ehr_events
        and await db.questionnaires.count_documents({}) == redcap_events
        and len(await db.subject_identifiers.distinct("subject_id")) == SUBJECTS
    )


async def test_cohort_query_answers_across_imaging_questionnaires_and_labs(
    settings: Settings, database: Any, sim: tuple[RedcapSimulator, str], tmp_path: Path
) -> None:
    imaging = DicomViews(settings)
    await imaging.setup()
    try:
        await imaging.apply(_imaging_events())
    finally:
        await imaging.close()
    app = build_worker_app(settings)
    await app.start()
    try:
        root, ehr_events, redcap_events = await _load_everything(settings, sim[0], tmp_path)
        await eventually(
            lambda: _views_filled(database, ehr_events, redcap_events),
            timeout_s=180,
            what="questionnaire and EHR views filled by the worker",
        )
    finally:
        await app.stop()

    threshold = 1.0
    latest = _expected_latest(root, CREATININE)
    hypertensive = _expected_diagnosed(root, "I10") | _expected_diagnosed(root, "401")
    expected_records = {
        f"R{n:03d}"
        for n in range(SUBJECTS)
        if _dicom_id(n)
        and _modality(n) == "MR"
        and n % 3 == 0
        and (m := _mimic_id(n)) is not None
        and latest.get(m, 0) >= threshold
    }
    registry = SubjectRegistry(settings)
    await registry.setup()
    try:
        expected = {await registry.subject_of(SubjectIdentifier.redcap(REDCAP_URL, "42", r)) for r in expected_records}
        query = CohortQuery(
            modalities=["MR"],
            questionnaires=[QuestionnaireCriterion(instrument="baseline", event_name="baseline_arm_1")],
            labs=[LabCriterion(code=CREATININE, min=threshold)],
        )
        result = await run_cohort_query(database, query)
        assert expected_records, "the synthetic cohort should contain matching subjects"
        assert set(result.subject_ids) == expected
        assert result.per_criterion["modality MR"] == sum(
            1 for n in range(SUBJECTS) if _dicom_id(n) and _modality(n) == "MR"
        )

        # Diagnosis prefixes (ICD-10 I10 or ICD-9 401x: the generator writes either).
        diagnosed = await run_cohort_query(database, CohortQuery(diagnoses=[DiagnosisCriterion(code_prefix="I10")]))
        diagnosed_9 = await run_cohort_query(database, CohortQuery(diagnoses=[DiagnosisCriterion(code_prefix="401")]))
        expected_diagnosed = {
            await registry.subject_of(SubjectIdentifier.ehr("mimic-iv", str(m))) for m in hypertensive
        }
        assert set(diagnosed.subject_ids) | set(diagnosed_9.subject_ids) == expected_diagnosed

        # One subject, every modality: the REDCap record, its images and its EHR.
        n = next(i for i in range(SUBJECTS) if _dicom_id(i) and _mimic_id(i) is not None)
        subject = await resolve_subject_id(database, f"dicom:{_dicom_id(n)}")
        view = await subject_view(database, subject)
        assert set(view["identifiers"]) == {
            f"dicom:{_dicom_id(n)}",
            f"redcap:{REDCAP_URL}|42|R{n:03d}",
            f"ehr:mimic-iv|{_mimic_id(n)}",
        }
        assert [s["_id"] for s in view["imaging"][0]["study_detail"]] == [f"1.2.826.0.1.3680043.8.498.{n + 1}"]
        assert {q["instrument"] for q in view["questionnaires"]} >= {"demographics", "baseline"}
        assert view["ehr"][0]["demographics"]["gender"] in {"M", "F"}
        timeline = await ehr_timeline(database, subject)
        dated = [t["effective_at"] for t in timeline if t["effective_at"] is not None]
        assert dated == sorted(dated) and len(timeline) > 5

        # A conflicting explicit link is refused, and nothing is merged.
        other = next(i for i in range(SUBJECTS) if i != n and _dicom_id(i))
        with pytest.raises(SubjectLinkConflict, match="already has"):
            await registry.link(
                SubjectIdentifier.redcap(REDCAP_URL, "42", f"R{n:03d}"),
                SubjectIdentifier.dicom(str(_dicom_id(other))),
                "explicit",
            )
        assert await resolve_subject_id(database, f"dicom:{_dicom_id(other)}") != subject
        assert await registry.conflicts()
    finally:
        await registry.close()


async def test_replaying_both_topics_builds_identical_views(
    settings: Settings, database: Any, sim: tuple[RedcapSimulator, str], tmp_path: Path
) -> None:
    app = build_worker_app(settings)
    await app.start()
    try:
        _, ehr_events, redcap_events = await _load_everything(settings, sim[0], tmp_path)
        await eventually(
            lambda: _views_filled(database, ehr_events, redcap_events),
            timeout_s=180,
            what="views filled the first time",
        )
    finally:
        await app.stop()
    first = await _snapshot(database)

    # A new consumer group reads both topics from offset 0 into an empty database.
    replay = settings.model_copy(
        update={
            "app_id": f"replay-{uuid.uuid4().hex[:8]}",
            "mongo_database": f"{settings.mongo_database}_replay",
            "data_dir": tmp_path / "replay-app",
        }
    )
    client = mongo_client(replay)
    replay_db = mongo_database(client, replay)
    app = build_worker_app(replay)
    await app.start()
    try:
        await eventually(
            lambda: _views_filled(replay_db, ehr_events, redcap_events),
            timeout_s=180,
            what="views rebuilt by the replay",
        )
        assert await _snapshot(replay_db) == first
    finally:
        await app.stop()
        await client.drop_database(replay.mongo_database)
        await client.close()

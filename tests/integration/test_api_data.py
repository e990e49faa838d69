"""Subjects, cohorts and statistics endpoints against the real stack (secantusd-rs).

The views are filled through the real sinks (``DicomViews``, ``RedcapViews``,
``EhrViews``, ``SuggestionViews``/``ReviewViews``) with synthetic events, so the
statistics counters are the ones the sinks maintain; nothing is mocked. The
application is the real one (``create_api``: lifespan, API keys) behind httpx's ASGI
transport, with a researcher key created in the test's own database.

Cohort (six DICOM patients P0..P5; the EHR subject id *is* the PatientID, and REDCap
field ``mrn`` holds it):

====  ========  ===  ===  =============================  ====================
n     modality  sex  age  questionnaire baseline          EHR (creatinine)
====  ========  ===  ===  =============================  ====================
0     MR        F    30   COMPLETE                        yes (1.5), I10
1     CT        M    40   COMPLETE                        yes (0.9)
2     MR        F    50   INCOMPLETE                      no
3     CT        M    60   INCOMPLETE                      no
4     MR        F    70   none                            yes (2.0), I10
5     CT        M    80   none                            no
====  ========  ===  ===  =============================  ====================
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api.app import create_api
from api.keys import KeyStore
from api.principals import Role
from cohortstream.admin import ensure_topics
from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    DicomInstanceReceived,
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
    ReviewDecision,
)
from cohortstream.settings import Settings, SubjectLinkRule
from cohortstream.subjects import SubjectIdentifier, subject_id_for
from consumers.annotation_views import ReviewViews, SuggestionViews
from consumers.dicom_views import DicomViews
from consumers.ehr_views import EhrViews
from consumers.redcap_views import RedcapViews
from tests.examples import example_events
from tests.polling import eventually

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
REDCAP_URL = "https://redcap.example.org/"
N = 6


@pytest.fixture
async def settings(stack_settings: Settings) -> Settings:
    settings = stack_settings.model_copy(
        update={
            "subject_link_rules": [
                SubjectLinkRule(redcap_field="mrn", target="dicom_patient_id"),
                SubjectLinkRule(ehr_source="mimic-iv", target="dicom_patient_id"),
            ]
        }
    )
    await ensure_topics(settings)
    return settings


def _dicom(n: int, instance: int = 1) -> DicomInstanceReceived:
    template = next(e for e in example_events() if isinstance(e, DicomInstanceReceived))
    study = f"1.2.826.0.1.3680043.8.498.77.{n + 1}"
    return template.model_copy(
        update={
            "patient_id": f"P{n}",
            "study_instance_uid": study,
            "series_instance_uid": f"{study}.1",
            "sop_instance_uid": f"{study}.1.{instance}",
            "modality": "MR" if n % 2 == 0 else "CT",
            "patient_sex": "F" if n % 2 == 0 else "M",
            "patient_age": f"{30 + 10 * n:03d}Y",
            "body_part_examined": "BRAIN",
            "received_at": T0 + timedelta(days=n // 3, minutes=instance),
        }
    )


def _redcap(n: int) -> RedcapRecordChanged:
    status = RedcapCompletionStatus.COMPLETE if n < 2 else RedcapCompletionStatus.INCOMPLETE
    return RedcapRecordChanged(
        redcap_url=REDCAP_URL,
        project_id="42",
        record_id=f"R{n}",
        event_name="baseline_arm_1",
        instrument="baseline",
        completion_status=status,
        trigger=RedcapTrigger.FULL_SYNC,
        values={"mrn": f"P{n}", "smoker": n % 2},
        emitted_at=T0,
        producer="test",
    )


def _ehr(n: int, creatinine: float, hypertension: bool) -> list[EhrRecord]:
    common = {"source": "mimic-iv", "subject_id": f"P{n}", "emitted_at": T0 + timedelta(days=1), "producer": "test"}
    rows = [
        EhrRecord(
            **common,
            source_file="patients.csv",
            source_row_id=f"p{n}",
            record_type=EhrRecordType.PATIENT,
            attributes={"gender": "F" if n % 2 == 0 else "M", "anchor_age": str(29 + 10 * n)},
        ),
        EhrRecord(
            **common,
            source_file="labevents.csv",
            source_row_id=f"l{n}a",
            record_type=EhrRecordType.LAB,
            effective_at=T0 - timedelta(days=10),
            code="50912",
            value_number=0.5,
            unit="mg/dL",
        ),
        EhrRecord(
            **common,
            source_file="labevents.csv",
            source_row_id=f"l{n}b",
            record_type=EhrRecordType.LAB,
            effective_at=T0 - timedelta(days=2),
            code="50912",
            value_number=creatinine,
            unit="mg/dL",
        ),
    ]
    if hypertension:
        rows.append(
            EhrRecord(
                **common,
                source_file="diagnoses_icd.csv",
                source_row_id=f"d{n}",
                record_type=EhrRecordType.DIAGNOSIS,
                effective_at=T0 - timedelta(days=5),
                code="I10",
            )
        )
    return rows


async def _fill(settings: Settings) -> dict[str, Any]:
    """The cohort of the module docstring, through the real sinks."""
    dicom, redcap, ehr = DicomViews(settings), RedcapViews(settings), EhrViews(settings)
    suggestions, reviews = SuggestionViews(settings), ReviewViews(settings)
    sinks = (dicom, redcap, ehr, suggestions, reviews)
    for sink in sinks:
        await sink.setup()
    try:
        events = [_dicom(n, i) for n in range(N) for i in (1, 2)]
        await dicom.apply(events)
        await dicom.apply(events[:4])  # a replayed batch changes no count
        assert await redcap.apply([_redcap(n) for n in range(4)]) == []
        await ehr.apply(_ehr(0, 1.5, True) + _ehr(1, 0.9, False) + _ehr(4, 2.0, True))
        template = next(e for e in example_events() if isinstance(e, AnnotationSuggested))
        suggestion = template.model_copy(
            update={
                "annotation_id": uuid.uuid4(),
                "study_instance_uid": _dicom(0).study_instance_uid,
                "series_instance_uid": _dicom(0).series_instance_uid,
                "model_name": "phantom-sphere-unet",
            }
        )
        second = template.model_copy(
            update={
                "annotation_id": uuid.uuid4(),
                "study_instance_uid": _dicom(2).study_instance_uid,
                "series_instance_uid": _dicom(2).series_instance_uid,
                "model_name": "phantom-sphere-unet",
            }
        )
        await suggestions.apply([suggestion, second])
        review_template = next(e for e in example_events() if isinstance(e, AnnotationReviewed))
        await reviews.apply(
            [
                review_template.model_copy(
                    update={
                        "annotation_id": suggestion.annotation_id,
                        "study_instance_uid": suggestion.study_instance_uid,
                        "series_instance_uid": suggestion.series_instance_uid,
                        "decision": ReviewDecision.ACCEPTED,
                        "reviewed_at": T0 + timedelta(days=3),
                        "corrected_seg_sop_instance_uid": None,
                    }
                )
            ]
        )
        return {"annotation_id": str(suggestion.annotation_id)}
    finally:
        for sink in sinks:
            await sink.close()


def _sid(n: int) -> str:
    """Subject id of cohort member n: the hash of its smallest identifier key."""
    keys = [f"dicom:P{n}"]
    if n < 4:
        keys.append(SubjectIdentifier.redcap(REDCAP_URL, "42", f"R{n}").key)
    if n in (0, 1, 4):
        keys.append(SubjectIdentifier.ehr("mimic-iv", f"P{n}").key)
    return subject_id_for(keys)


@pytest.fixture
async def api(settings: Settings, db: Any) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    facts = await _fill(settings)
    issued = await KeyStore(db).create("researcher-test", Role.RESEARCHER)
    app = create_api(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {issued.key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers, timeout=60) as client:
            yield client, facts


async def test_every_endpoint_needs_a_key(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, _ = api
    for method, path in (
        ("GET", "/subjects"),
        ("GET", f"/subjects/{_sid(0)}"),
        ("GET", "/statistics"),
        ("POST", "/cohorts/query"),
        ("POST", "/cohorts/export"),
    ):
        response = await client.request(
            method, path, json={} if method == "POST" else None, headers={"Authorization": ""}
        )
        assert response.status_code == 401, (path, response.text)


async def test_subjects_are_listed_with_filters_and_cursor_pages(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, _ = api
    seen: list[str] = []
    cursor = None
    for _ in range(10):  # bounded: 6 subjects in pages of 4
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = (await client.get("/subjects", params=params)).json()
        seen += [item["subject_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(_sid(n) for n in range(N))

    async def ids(**params: Any) -> set[str]:
        response = await client.get("/subjects", params={**params, "limit": 500})
        assert response.status_code == 200, response.text
        return {item["subject_id"] for item in response.json()["items"]}

    assert await ids(modality="MR") == {_sid(0), _sid(2), _sid(4)}
    assert await ids(sex="M") == {_sid(1), _sid(3), _sid(5)}
    assert await ids(has_questionnaire=True) == {_sid(n) for n in range(4)}
    assert await ids(has_questionnaire=False) == {_sid(4), _sid(5)}
    assert await ids(source="ehr") == {_sid(0), _sid(1), _sid(4)}
    assert await ids(source="ehr", modality="MR", has_questionnaire=True) == {_sid(0)}
    assert await ids(modality="PT") == set()
    items = (await client.get("/subjects", params={"modality": "MR"})).json()["items"]
    first = next(item for item in items if item["subject_id"] == _sid(0))
    assert first["sources"] == ["dicom", "ehr", "redcap"] and first["identifiers"][0] == "dicom:P0"
    assert (first["sex"], first["age_years"], first["modalities"], first["questionnaire_count"]) == ("F", 30, ["MR"], 1)


async def test_one_subject_shows_every_modality_by_id_or_identifier(
    api: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    client, facts = api
    by_id = await client.get(f"/subjects/{_sid(0)}")
    assert by_id.status_code == 200, by_id.text
    detail = by_id.json()
    for identifier in ("dicom:P0", "ehr:mimic-iv|P0", SubjectIdentifier.redcap(REDCAP_URL, "42", "R0").key):
        response = await client.get(f"/subjects/{quote(identifier, safe='')}")
        assert response.status_code == 200, (identifier, response.text)
        assert response.json() == detail
    (patient,) = detail["imaging"]
    assert (patient["patient_id"], patient["sex"], patient["age_years"], patient["instance_count"]) == (
        "P0",
        "F",
        30,
        2,
    )
    (study,) = patient["studies"]
    assert study["orthanc_url"].endswith(f"/studies/{study['orthanc_id']}") and "explorer" in study["explorer_url"]
    ohif = f"/ohif/monai-label?StudyInstanceUIDs={quote(study['study_instance_uid'], safe='')}"
    assert study["viewer_url"] == ohif
    (series,) = study["series"]
    assert series["viewer_url"] == ohif and all(a["viewer_url"] == ohif for a in series["annotations"])
    assert series["instance_count"] == 2 and series["orthanc_url"].endswith(f"/series/{series['orthanc_id']}")
    assert [(a["annotation_id"], a["status"]) for a in series["annotations"]] == [(facts["annotation_id"], "accepted")]
    (questionnaire,) = detail["questionnaires"]
    assert (questionnaire["instrument"], questionnaire["completion_status"]) == ("baseline", "COMPLETE")
    (ehr,) = detail["ehr"]
    assert ehr["latest_labs"]["50912"]["value"] == 1.5 and ehr["diagnosis_codes"] == ["I10"] and ehr["sex"] == "F"


async def test_the_timeline_pages_by_time(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, _ = api
    first = (await client.get("/subjects/dicom%3AP0/timeline", params={"limit": 2})).json()
    assert [e["entry_id"] for e in first["items"]] == ["mimic-iv|l0a", "mimic-iv|d0"]
    assert first["next_after"] is not None
    rest = (await client.get("/subjects/dicom%3AP0/timeline", params={"limit": 2, "after": first["next_after"]})).json()
    assert [e["entry_id"] for e in rest["items"]] == ["mimic-iv|l0b"]
    assert rest["next_after"] is None
    none = (await client.get(f"/subjects/{_sid(5)}/timeline")).json()
    assert none["items"] == []


async def test_unknown_subjects_and_bad_input_answer_4xx_naming_the_field(
    api: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    client, _ = api
    cases = [
        ("GET", "/subjects/S000000000000000", None, 404, "subject"),
        ("GET", "/subjects/dicom%3ANOPE", None, 404, "subject"),
        ("GET", "/subjects/pacs%3AP0", None, 422, "subject"),  # not an identifier kind
        ("GET", "/subjects/ehr%3Anopipe", None, 422, "subject"),
        ("GET", "/subjects?limit=100000", None, 422, "limit"),
        ("GET", "/subjects?cursor=%%%", None, 422, "cursor"),
        ("GET", "/subjects?sex=unknown", None, 422, "sex"),
        ("GET", "/subjects/dicom%3AP0/timeline?after=soon", None, 422, "after"),
        ("POST", "/cohorts/query", {"modalities": ["MR"], "age": 3}, 422, "age"),
        ("POST", "/cohorts/query", {"labs": [{"code": "50912", "min": "high"}]}, 422, "labs.0.min"),
        ("POST", "/cohorts/export?format=xml", {}, 422, "format"),
    ]
    for method, path, body, status, field in cases:
        response = await client.request(method, path, json=body)
        assert response.status_code == status, (path, response.text)
        assert response.json()["field"] == field, (path, response.text)
        assert "Traceback" not in response.text


async def test_a_cross_modal_query_answers_subjects_and_counts(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, _ = api
    query = {
        "modalities": ["MR"],
        "questionnaires": [{"instrument": "baseline", "event_name": "baseline_arm_1"}],
        "labs": [{"code": "50912", "min": 1.2}],
        "diagnoses": [{"code_prefix": "I1"}],
    }
    response = await client.post("/cohorts/query", json=query)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["count"], body["subject_ids"]) == (1, [_sid(0)])
    assert body["per_criterion"] == {
        "modality MR": 3,
        "questionnaire baseline@baseline_arm_1 COMPLETE": 2,
        "lab 50912 in [1.2, inf]": 2,
        "diagnosis I1*": 2,
    }
    everyone = (await client.post("/cohorts/query", json={})).json()
    assert everyone["count"] == N


async def test_the_export_streams_one_row_per_subject(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, _ = api
    query = {"labs": [{"code": "50912", "min": 1.0}]}
    async with client.stream("POST", "/cohorts/export", params={"format": "csv"}, json=query) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["x-cohort-count"] == "2"
        text = "".join([chunk async for chunk in response.aiter_text()])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["subject_id"] for r in rows] == sorted([_sid(0), _sid(4)])
    row = next(r for r in rows if r["subject_id"] == _sid(4))
    assert (row["modalities"], row["sex"], row["age_years"], row["has_ehr"], row["questionnaire_count"]) == (
        "MR",
        "F",
        "70",
        "True",
        "0",
    )
    response = await client.post("/cohorts/export", params={"format": "ndjson"}, json={})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert sorted(line["subject_id"] for line in lines) == sorted(_sid(n) for n in range(N))


async def test_statistics_come_from_counters_and_indexed_counts(api: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    client, _ = api
    response = await client.get("/statistics")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["series_by_modality"] == {"CT": 3, "MR": 3}
    assert stats["patients_by_modality"] == {"CT": 3, "MR": 3}
    assert stats["series_by_body_part"] == {"BRAIN": 6}
    assert stats["sex"] == {"dicom": {"F": 3, "M": 3}, "ehr": {"F": 2, "M": 1}}
    assert stats["age_bands"]["dicom"] == {"0-17": 0, "18-39": 1, "40-59": 2, "60-79": 2, "80+": 1}
    assert stats["age_bands"]["ehr"] == {"0-17": 0, "18-39": 2, "40-59": 0, "60-79": 1, "80+": 0}
    assert stats["questionnaire_completion"] == [
        {
            "instrument": "baseline",
            "event_name": "baseline_arm_1",
            "counts": {"INCOMPLETE": 2, "UNVERIFIED": 0, "COMPLETE": 2},
        }
    ]
    assert stats["annotations_by_model"] == [
        {
            "model": "phantom-sphere-unet",
            "counts": {"suggested": 1, "accepted": 1, "rejected": 0, "corrected": 0},
        }
    ]
    # Two instances per patient; patients 0-2 arrived on day 0, 3-5 on day 1; the replayed batch counts once.
    assert stats["ingestion"]["dicom_instances_per_day"] == [
        {"day": str(date(2024, 5, 1)), "count": 6},
        {"day": str(date(2024, 5, 2)), "count": 6},
    ]
    assert stats["ingestion"]["redcap_records_per_day"] == [{"day": "2024-05-01", "count": 4}]
    assert stats["ingestion"]["ehr_records_per_day"] == [{"day": "2024-05-02", "count": 11}]

    async def multimodal_figure() -> dict[str, Any] | None:
        return (await client.get("/statistics")).json()["multimodal"]  # type: ignore[no-any-return]

    multimodal = await eventually(multimodal_figure, timeout_s=30, what="multimodal statistics computed")
    assert (
        multimodal["subjects"],
        multimodal["with_imaging"],
        multimodal["with_questionnaire"],
        multimodal["with_ehr"],
        multimodal["complete"],
    ) == (6, 6, 4, 3, 2)
    assert stats["totals"]["series"] == 6 and stats["answered_by"]["age_bands"] == "counter"

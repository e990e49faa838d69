"""The audit trail against the real stack: every access path leaves its record, and an
access whose record Kafka refuses is not served.

The data is real: a study stored in the test Orthanc, its instances folded into the views
by the real ``DicomViews`` sink (so the registry holds the subject), a suggestion on its
series. Every access goes through the real application (ASGI) or the real CLI; the
records travel through the real audit topic to the real ``audit`` lane (the deployed
worker's ``cohortstream worker --lane audit``, a subprocess) into MongoDB, and are read
back through ``GET /audit`` and ``cohortstream audit``.

The refusal is real too: the audit topic is created with ``max.message.bytes`` smaller
than any audit event, so the broker itself refuses every record (``MESSAGE_TOO_LARGE``).
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from api.app import create_api
from api.auth import Role
from cohortstream.admin import ensure_topics
from cohortstream.cli import main
from cohortstream.events import AccessAudited, AuditOutcome
from cohortstream.mongo import open_database
from cohortstream.orthanc import OrthancClient
from cohortstream.settings import Settings, settings_environment
from cohortstream.subjects import SubjectIdentifier, subject_id_for
from consumers.audit_trail import COLLECTION, AuditTrail
from consumers.dicom_views import DicomViews
from consumers.features.views import FeatureViews
from tests.annotation_api_data import dataset_bytes
from tests.examples import example_instance
from tests.integration.test_annotation_api import annotation, create_key
from tests.integration.test_viewer_access import _stow_body
from tests.kafka_probe import read_topic
from tests.polling import eventually

COHORT_QUERY = {"modalities": ["MR"]}


@pytest.fixture
async def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    settings = stack_settings.model_copy(
        update={
            "api_key_cache_ttl_s": 0.0,
            "bids_export_root": tmp_path / "exports",
            "bids_pseudonym_key": SecretStr("k" * 32),
            "worker_metrics_port": 0,
        }
    )
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def study(settings: Settings, db: Any) -> dict[str, Any]:
    """One MR slice stored in Orthanc, its instance folded into the views (the registry
    then knows its subject), and a suggestion on its series."""
    from consumers.annotation.phantoms import phantom_series

    patient_id = f"AUDIT-{uuid.uuid4().hex[:8]}"
    datasets, _ = phantom_series(3, (8, 16, 16), patient_id=patient_id)
    ds: pydicom.Dataset = datasets[0]
    async with OrthancClient(settings) as archive:
        await archive.store_bytes(dataset_bytes(ds), "audit test slice")
    event = example_instance(0).model_copy(
        update={
            "patient_id": patient_id,
            "study_instance_uid": str(ds.StudyInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "modality": "MR",
        }
    )
    views = DicomViews(settings)
    await views.setup()
    try:
        await views.apply([event])
    finally:
        await views.close()
    features = FeatureViews(settings)  # the features lane's sink: the subject gets its vector
    await features.setup()
    try:
        await features.apply([event])
        await features.flush_due(everything=True)
    finally:
        await features.close()
    doc = annotation(study=str(ds.StudyInstanceUID), series=str(ds.SeriesInstanceUID))
    await db["annotations"].insert_one(dict(doc))
    return {
        "patient_id": patient_id,
        "subject_id": subject_id_for([SubjectIdentifier.dicom(patient_id).key]),
        "study_uid": str(ds.StudyInstanceUID),
        "annotation_id": str(doc["_id"]),
        "dataset": ds,
    }


@pytest.fixture
def audit_lane(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The deployed worker's audit lane, as ``cohortstream worker --lane audit`` runs it."""
    env = {**os.environ, **settings_environment(settings), "COHORTSTREAM_LOG_FORMAT": "console"}
    env.pop("COHORTSTREAM_ENV_FILE", None)
    log = (tmp_path / "audit-lane.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cohortstream.cli", "worker", "--lane", "audit"], env=env, stdout=log, stderr=log
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
async def app(settings: Settings, db: Any) -> AsyncIterator[Any]:
    application = create_api(settings)
    async with application.router.lifespan_context(application):
        yield application


def _client(app: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("192.0.2.7", 50000)),
        base_url="http://api",
        timeout=120,
        headers={"Authorization": f"Bearer {key}"},
    )


async def _trail(db: Any, **query: Any) -> list[dict[str, Any]]:
    return await db[COLLECTION].find(query).to_list()  # type: ignore[no-any-return]


async def test_every_access_path_leaves_its_record_and_the_trail_answers_who_and_what(
    app: Any,
    settings: Settings,
    db: Any,
    study: dict[str, Any],
    audit_lane: subprocess.Popen[bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    subject = study["subject_id"]
    researcher = await create_key(settings, Role.RESEARCHER, "reader")
    admin = await create_key(settings, Role.ADMIN, "dr.admin")
    researcher_id, admin_id = researcher.split("_")[1], admin.split("_")[1]
    body = json.dumps(COHORT_QUERY).encode()

    async with _client(app, researcher) as client:
        assert (await client.get("/subjects")).status_code == 200
        assert (await client.get(f"/subjects/{subject}")).status_code == 200
        assert (await client.get(f"/subjects/dicom%3A{study['patient_id']}/timeline")).status_code == 200
        queried = await client.post("/cohorts/query", content=body, headers={"Content-Type": "application/json"})
        assert queried.status_code == 200 and subject in queried.json()["subject_ids"]
        for fmt in ("csv", "ndjson"):
            exported = await client.post(f"/cohorts/export?format={fmt}", json=COHORT_QUERY)
            assert exported.status_code == 200 and subject in exported.text
        assert (await client.get(f"/subjects/{subject}/features")).status_code == 200
        matrix = await client.post("/cohorts/features?format=csv", json=COHORT_QUERY)
        assert matrix.status_code == 200 and subject in matrix.text, matrix.text
        wado = await client.get(
            f"/proxy/dicom/wado/studies/{study['study_uid']}/metadata", headers={"Accept": "application/dicom+json"}
        )
        assert wado.status_code == 200, wado.text
        assert (
            await client.get("/proxy/dicom/qido/studies", params={"PatientID": study["patient_id"]})
        ).status_code == 200
        assert (await client.get("/subjects/S000000000000000")).status_code == 404  # unknown: nothing served
    async with _client(app, admin) as client:
        accepted = await client.post(f"/annotations/{study['annotation_id']}/accept", json={})
        assert accepted.status_code == 202, accepted.text
        rejected = await client.post(f"/annotations/{study['annotation_id']}/reject", json={"reason": "second look"})
        assert rejected.status_code == 202, rejected.text
        stow, content_type = _stow_body(study["dataset"])
        stored = await client.post(
            f"/proxy/dicom/stow/studies/{study['study_uid']}", content=stow, headers={"Content-Type": content_type}
        )
        assert stored.status_code == 200, stored.text
        job = await client.post("/exports/bids", json={"name": "audited", "subjects": [subject]})
        assert job.status_code == 202, job.text

        async def finished() -> bool:
            status = (await client.get(f"/exports/{job.json()['job_id']}")).json()["status"]
            return status != "running"

        await eventually(finished, timeout_s=120, what="the BIDS export job to end")

    # The CLI's export, as an operator runs it.
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COHORTSTREAM_BIDS_PSEUDONYM_KEY", "k" * 32)
    cli_out = tmp_path / "cli-bids"
    assert await asyncio.to_thread(main, ["export", "bids", str(cli_out), "--subjects", subject]) == 0
    assert await asyncio.to_thread(main, ["features", "export", str(tmp_path / "features.parquet")]) == 0
    capsys.readouterr()

    wanted = {
        "subjects.list",
        "subjects.read",
        "subjects.timeline",
        "cohorts.query",
        "cohorts.export",
        "dicomweb.read",
        "annotations.review",
        "dicomweb.store",
        "exports.bids",
        "features.read",
        "exports.features",
    }

    async def all_kept() -> list[dict[str, Any]] | None:
        docs = await _trail(db)
        return docs if {d["action"] for d in docs} >= wanted and len(docs) >= 16 else None

    await eventually(all_kept, timeout_s=90, what="the audit lane to keep every access")

    async with _client(app, admin) as client:
        answered = await client.get("/audit", params={"subject": f"dicom:{study['patient_id']}"})
        assert answered.status_code == 200, answered.text
        by_subject = answered.json()["items"]
        by_key = (await client.get("/audit", params={"key": researcher_id})).json()["items"]
    async with _client(app, researcher) as client:
        assert (await client.get("/audit")).status_code == 403, "the trail is for admins"

    # Who accessed the subject: every path, each with its actor.
    actions = {(d["action"], d["actor_id"]) for d in by_subject}
    for action in ("subjects.list", "subjects.read", "subjects.timeline", "cohorts.query", "cohorts.export"):
        assert (action, researcher_id) in actions, action
    assert ("dicomweb.read", researcher_id) in actions
    assert ("annotations.review", admin_id) in actions and ("dicomweb.store", admin_id) in actions
    assert len([d for d in by_subject if d["action"] == "annotations.review"]) == 2, "accept and reject"
    assert ("exports.bids", admin_id) in actions
    assert ("exports.bids", f"cli:{getpass.getuser()}") in actions
    assert ("features.read", researcher_id) in actions and ("exports.features", researcher_id) in actions
    assert ("exports.features", f"cli:{getpass.getuser()}") in actions
    # What a key did: the researcher's records only, the search among them with no subject count.
    assert {d["actor_id"] for d in by_key} == {researcher_id}
    searches = [d for d in by_key if d["action"] == "dicomweb.read" and d["subject_count"] is None]
    assert len(searches) == 1 and searches[0]["query_sha256"] is not None
    exports = [d for d in by_key if d["action"] == "cohorts.export"]
    assert len(exports) == 2 and all(d["endpoint"] == "POST /cohorts/export" for d in exports)

    query = next(d for d in by_subject if d["action"] == "cohorts.query")
    assert query["query_sha256"] == hashlib.sha256(body).hexdigest()
    assert query["outcome"] == AuditOutcome.SUCCESS.value and query["status"] == 200
    assert query["source_address"] == "192.0.2.7" and query["actor_name"] == "reader"
    read = next(d for d in by_subject if d["action"] == "subjects.timeline")
    assert read["endpoint"] == "GET /subjects/{subject:path}/timeline", "the route, never the identifier in the URL"
    cli = next(d for d in by_subject if d["actor_id"].startswith("cli:") and d["action"] == "exports.bids")
    assert cli["source_address"].startswith("local:") and cli["subject_ids"] == [subject]
    assert not [d for d in await _trail(db) if d["status"] == 404], "an unknown subject served nothing"

    # The trail holds subject ids, never the PatientID or the identifier asked for.
    dumped = json.dumps(await _trail(db), default=str)
    assert study["patient_id"] not in dumped

    # The CLI answers the same questions.
    assert await asyncio.to_thread(main, ["audit", "--subject", subject]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["event_id"] for line in lines} == {d["event_id"] for d in by_subject}
    assert (
        await asyncio.to_thread(main, ["audit", "--key", f"cli:{getpass.getuser()}", "--since", "2020-01-01T00:00:00Z"])
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["action"] for line in lines] == ["exports.features", "exports.bids"], "newest first"


async def test_the_trail_is_insert_only_and_a_replay_adds_nothing(settings: Settings, db: Any) -> None:
    events = [
        AccessAudited(
            producer="api",
            actor_id="key1",
            actor_name="n",
            action="subjects.read",
            endpoint="GET /subjects/{subject}",
            subject_ids=["S0123456789ABCDE"],
            subject_count=1,
            outcome=AuditOutcome.SUCCESS,
        )
        for _ in range(3)
    ]
    trail = AuditTrail(settings)
    await trail.setup()
    try:
        assert await trail.apply(events) == 3
        assert await trail.apply(events) == 0, "a redelivered batch is skipped, not rewritten"
    finally:
        await trail.close()
    assert await db[COLLECTION].count_documents({}) == 3
    names = {tuple(index["key"]) for index in await (await db[COLLECTION].list_indexes()).to_list()}
    assert {("subject_ids", "at"), ("actor_id", "at"), ("at",)} <= names


async def _refusing_audit_topic(settings: Settings) -> None:
    """The audit topic, created before the others with a size limit no audit event fits."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        created = await admin.create_topics(
            [
                NewTopic(
                    name=settings.topic("audit.access"),
                    num_partitions=1,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": "64"},
                )
            ]
        )
        assert created.topic_errors[0][1] == 0, created  # created here, with the limit
    finally:
        await admin.close()


async def test_when_kafka_refuses_the_audit_record_nothing_is_served(
    stack_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Not the module's ``settings``/``db`` fixtures: they create the topics, and the audit
    # topic must be created here first, with its limit.
    settings = stack_settings.model_copy(update={"api_key_cache_ttl_s": 0.0, "kafka_request_timeout_s": 10.0})
    await _refusing_audit_topic(settings)
    await ensure_topics(settings)
    try:
        await _refused_everywhere(settings, tmp_path, monkeypatch, capsys)
    finally:
        async with open_database(settings) as db:
            await db.client.drop_database(settings.mongo_database)


async def _refused_everywhere(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    views = DicomViews(settings)
    await views.setup()
    try:
        await views.apply([example_instance(0)])
    finally:
        await views.close()
    subject = subject_id_for([SubjectIdentifier.dicom(example_instance(0).patient_id).key])
    suggestion = annotation(
        study=example_instance(0).study_instance_uid, series=example_instance(0).series_instance_uid
    )
    async with open_database(settings) as db:
        await db["annotations"].insert_one(dict(suggestion))
    key = await create_key(settings, Role.ADMIN, "dr.admin")
    application = create_api(settings)
    async with application.router.lifespan_context(application), _client(application, key) as client:
        assert (await client.get("/healthz")).status_code == 200, "unaudited routes keep working"
        for response in (
            await client.get(f"/subjects/{subject}"),
            await client.post("/cohorts/query", json={}),
            await client.post("/cohorts/export?format=csv", json={}),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"].startswith("audit trail unavailable")
            assert subject not in response.text, "no data left with the refusal"
        job = await client.post("/exports/bids", json={"name": "never"})
        assert job.status_code == 503
        async with open_database(settings) as db:
            assert await db["export_jobs"].count_documents({}) == 0, "a refused export leaves no job behind"
        # A review changes state: its audit is recorded first, so a refused audit means no review.
        review = await client.post(f"/annotations/{suggestion['_id']}/accept", json={})
        assert review.status_code == 503 and review.json()["error"].startswith("audit trail unavailable"), review.text
    assert await read_topic(settings, "annotation.reviewed", 0, timeout_s=5, drain_s=2.0) == [], "no review published"
    assert not (settings.bids_export_root / "never").exists()

    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COHORTSTREAM_BIDS_PSEUDONYM_KEY", "k" * 32)
    out = tmp_path / "cli-bids"
    assert await asyncio.to_thread(main, ["export", "bids", str(out)]) == 1
    assert "audit trail is unavailable" in capsys.readouterr().err
    assert not out.exists(), "the CLI wrote nothing"
    features_out = tmp_path / "features.parquet"
    assert await asyncio.to_thread(main, ["features", "export", str(features_out)]) == 1
    assert "audit trail is unavailable" in capsys.readouterr().err
    assert not features_out.exists()

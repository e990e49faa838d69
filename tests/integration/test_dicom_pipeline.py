"""The DICOM stream end to end on the real stack: DicomInstanceReceived events (with
their files in the staging store) → worker agents → Orthanc, MongoDB views and
DicomSeriesCompleted; poison to the dead-letter topic; replay gives identical views.

The listener that produces these events is tested in test_dicom_listener.py; here the
events are built from the staged files directly so the stream side is tested alone.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from aiokafka import AIOKafkaProducer
from pydicom.data import get_testdata_file

from cohortstream.admin import ensure_topics
from cohortstream.dicom_attributes import instance_event as listener_event
from cohortstream.dicom_attributes import read_instance_attributes
from cohortstream.events import DicomInstanceReceived, DicomSeriesCompleted
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.orthanc_ids import orthanc_ids
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from producers.dicom import PRODUCER
from streams.worker import build_worker_app
from tests.kafka_probe import read_topic
from tests.polling import eventually
from tests.views_snapshot import views_snapshot

VIEWS = ("instances", "series", "studies", "patients")


def fresh_seed() -> int:
    """A new synthetic study per test run: Orthanc outlives a test, and a study it already
    holds would make "stored now" indistinguishable from "found"."""
    return uuid.uuid4().int % 10**9


async def forget_in_orthanc(settings: Settings, paths: list[Path]) -> None:
    """Delete these files' instances from Orthanc if an earlier test stored them.

    pydicom's sample files have fixed UIDs, and Orthanc keeps the first copy of an
    instance it is sent (it does not overwrite): a test that checks the stored bytes
    must start from an Orthanc that does not hold a differently encoded earlier copy.
    """
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=30) as client:
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ids = orthanc_ids(
                str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            )
            response = await client.delete(f"/instances/{ids.instance}")
            assert response.status_code in (200, 404), response.text


async def views_caught_up(database: Any, per_series: dict[str, int]) -> bool:
    """True once both agents are done with these series: every instance archived
    (``in_orthanc``) and folded into the views (``received_sha256``, written by the views
    agent), and the counts refreshed: series, then studies, then patients — the patients'
    counts are the views agent's last step for a batch, so they are checked last."""
    expected = sum(per_series.values())
    done = await database.instances.count_documents(
        {"series_instance_uid": {"$in": list(per_series)}, "in_orthanc": True, "received_sha256": {"$exists": True}}
    )
    if done != expected:
        return False
    series = [d async for d in database.series.find({"_id": {"$in": list(per_series)}})]
    if {d["_id"]: d.get("instance_count") for d in series} != per_series:
        return False
    for patient_id in {d["patient_id"] for d in series}:
        patient = await database.patients.find_one({"_id": patient_id})
        if patient is None or patient.get("instance_count") != await database.instances.count_documents(
            {"patient_id": patient_id}
        ):
            return False
    return True


def per_series(events: list[DicomInstanceReceived]) -> dict[str, int]:
    """How many distinct instances each series should end with."""
    uids: dict[str, set[str]] = {}
    for event in events:
        uids.setdefault(event.series_instance_uid, set()).add(event.sop_instance_uid)
    return {series: len(sops) for series, sops in uids.items()}


def instance_event(path: Path, store: StagingStore) -> DicomInstanceReceived:
    """Stage ``path`` and describe it exactly as the listener does."""
    staged = store.stage_file(path)
    attributes = read_instance_attributes(staged.path)
    return listener_event(
        attributes,
        staged,
        producer=PRODUCER,
        calling_aet="TESTSCU",
        called_aet="COHORTSTREAM",
        received_at=datetime.now(UTC),
    )


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"series_quiet_period_s": 2.0, "staging_dir": tmp_path / "staging", "sink_retry_attempts": 3}
    )


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Any]:
    await ensure_topics(settings)
    app = build_worker_app(settings)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Any]:
    client = mongo_client(settings)
    yield mongo_database(client, settings)
    await client.drop_database(settings.mongo_database)
    await client.close()


@pytest.fixture
def orthanc(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.orthanc_url,
        auth=(settings.orthanc_username, settings.orthanc_password.get_secret_value()),
        timeout=30,
    )


async def completions(settings: Settings, expected: int, timeout_s: float = 90) -> list[DicomSeriesCompleted]:
    """The series-completed events, once ``expected`` arrived (and no extra)."""
    found = [r.event for r in await read_topic(settings, "dicom.series-completed", expected, timeout_s=timeout_s)]
    assert all(isinstance(e, DicomSeriesCompleted) for e in found)
    return found  # type: ignore[return-value]


async def _snapshot(db: Any) -> dict[str, list[dict[str, Any]]]:
    return await views_snapshot(db, VIEWS)


async def test_instances_reach_orthanc_and_views_exactly_once(
    worker: Any, settings: Settings, database: Any, orthanc: httpx.AsyncClient, tmp_path: Path
) -> None:
    files = write_study(mr_study(n_series=2, slices=6, rows=16, cols=16, seed=fresh_seed()), tmp_path / "study")
    files += [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    await forget_in_orthanc(settings, files[-2:])
    store = StagingStore(settings.staging_dir)
    events = [instance_event(path, store) for path in files]
    async with EventPublisher(settings) as publisher:
        for event in events:
            await publisher.publish(event, key=event.series_instance_uid)
        # A second copy of an instance (a modality retrying) changes nothing.
        await publisher.publish(
            events[0].model_copy(update={"event_id": uuid.uuid4()}), key=events[0].series_instance_uid
        )

    async def all_archived() -> bool:
        return await views_caught_up(database, per_series(events))

    await eventually(all_archived, timeout_s=120, what="every instance archived and in the views")

    for event in events:
        ids = orthanc_ids(event.patient_id, event.study_instance_uid, event.series_instance_uid, event.sop_instance_uid)
        response = await orthanc.get(f"/instances/{ids.instance}/file")
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == event.sha256
        assert not Path(event.staged_uri.removeprefix("file://")).exists(), "staged file kept after archiving"

    series = {d["_id"]: d async for d in database.series.find({})}
    assert {uid: d["instance_count"] for uid, d in series.items()} == {
        uid: sum(e.series_instance_uid == uid for e in events) for uid in {e.series_instance_uid for e in events}
    }
    study = await database.studies.find_one({"_id": events[0].study_instance_uid})
    assert study["instance_count"] == 12 and study["series_count"] == 2 and study["modalities"] == ["MR"]
    assert study["viewer_url"].endswith(study["orthanc_id"])
    patient = await database.patients.find_one({"_id": events[0].patient_id})
    assert patient["study_count"] == 1 and patient["instance_count"] == 12

    completed = await completions(settings, expected=len(series))
    assert sorted((c.series_instance_uid, c.revision, c.instance_count) for c in completed) == sorted(
        (uid, 1, d["instance_count"]) for uid, d in series.items()
    )


async def test_poison_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing(
    worker: Any, settings: Settings, database: Any, tmp_path: Path
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        poison = await producer.send_and_wait(settings.topic("dicom.instance-received"), b"\x00not avro", key=b"k")
    finally:
        await producer.stop()
    good = instance_event(Path(get_testdata_file("CT_small.dcm")), StagingStore(settings.staging_dir))
    async with EventPublisher(settings) as publisher:
        await publisher.publish(good, key="k")  # same key, same partition, after the poison

    async def good_one_viewed() -> Any:
        return await database.instances.find_one({"_id": good.sop_instance_uid, "in_orthanc": True})

    await eventually(good_one_viewed, timeout_s=90, what="the message after the poison")

    readers = {"dicom-archive", "dicom-views", "series-completion", "features-dicom"}

    async def poison_archived() -> list[dict[str, Any]] | None:
        letters = await database.dead_letters.find({"source.offset": poison.offset}).to_list(None)
        return letters if {d["producer"] for d in letters} == readers else None

    # Every agent reading the topic dead-letters it once, naming itself and the reason.
    letters = await eventually(poison_archived, timeout_s=60, what="a dead letter from every reader")
    assert len(letters) == len(readers)
    for letter in letters:
        assert letter["stage"] == "DECODE"
        assert letter["value"] == b"\x00not avro"
        assert "single-object marker" in letter["reason"]
        assert letter["source"]["topic"] == settings.topic("dicom.instance-received")


async def test_replaying_the_topic_from_the_beginning_rebuilds_identical_views(
    worker: Any, settings: Settings, database: Any, tmp_path: Path
) -> None:
    store = StagingStore(settings.staging_dir)
    events = [
        instance_event(p, store)
        for p in write_study(mr_study(n_series=2, slices=4, rows=8, cols=8, seed=fresh_seed()), tmp_path / "a")
    ]
    marker = instance_event(Path(get_testdata_file("MR_small.dcm")), store)
    async with EventPublisher(settings) as publisher:
        for event in events:
            await publisher.publish(event, key=event.series_instance_uid)
        await publisher.publish(marker, key=marker.series_instance_uid)

    async def counted() -> bool:
        doc = await database.patients.find_one({"_id": marker.patient_id, "instance_count": 1})
        n = await database.instances.count_documents({"in_orthanc": True})
        return doc is not None and n == len(events) + 1

    await eventually(counted, timeout_s=120, what="views built")
    original = await _snapshot(database)

    # A second worker with a new consumer group and an empty database reads from offset 0.
    replay_settings = settings.model_copy(
        update={"app_id": f"{settings.app_id}-replay", "mongo_database": f"{settings.mongo_database}_replay"}
    )
    replay = build_worker_app(replay_settings)
    client = mongo_client(replay_settings)
    replay_db = mongo_database(client, replay_settings)
    await replay.start()
    try:

        async def replayed() -> bool:
            doc = await replay_db.patients.find_one({"_id": marker.patient_id, "instance_count": 1})
            n = await replay_db.instances.count_documents({"in_orthanc": True})
            return doc is not None and n == len(events) + 1

        await eventually(replayed, timeout_s=120, what="views rebuilt by the replay")
        assert await _snapshot(replay_db) == original
    finally:
        await replay.stop()
        await client.drop_database(replay_settings.mongo_database)
        await client.close()


async def test_sweeper_removes_archived_orphans_and_republishes_the_others(
    worker: Any, settings: Settings, database: Any, orthanc: httpx.AsyncClient, tmp_path: Path
) -> None:
    from consumers.staging_sweeper import sweep_staging

    archived_path, orphan_path = write_study(
        mr_study(n_series=1, slices=2, rows=8, cols=8, seed=fresh_seed()), tmp_path / "o"
    )
    store = StagingStore(settings.staging_dir)
    archived = store.stage_file(archived_path)
    orphan = store.stage_file(orphan_path)
    # One staged file whose instance reached Orthanc but whose file stayed (e.g. a crash
    # between the two steps), one whose event never made it.
    assert (await orthanc.post("/instances", content=archived_path.read_bytes())).status_code == 200

    progress: list[tuple[int, int]] = []
    dry = await sweep_staging(settings, min_age_s=0, dry_run=True, on_progress=lambda d, n: progress.append((d, n)))
    assert dry.scanned == 2 and len(dry.republished) == 1 and len(dry.removed_already_archived) == 1
    assert progress == [(1, 2), (2, 2)], "the CLI's progress bar is fed once per staged file"
    assert archived.path.exists() and orphan.path.exists()

    report = await sweep_staging(settings, min_age_s=0)
    orphan_uid = pydicom.dcmread(orphan_path, stop_before_pixels=True).SOPInstanceUID
    assert report.republished == [orphan_uid]
    assert not archived.path.exists()

    async def orphan_archived() -> Any:
        return await database.instances.find_one({"_id": orphan_uid, "in_orthanc": True, "sha256": orphan.sha256})

    await eventually(orphan_archived, timeout_s=90, what="the republished orphan archived")
    assert not orphan.path.exists()
    assert (await sweep_staging(settings, min_age_s=0)).scanned == 0

"""Faults on the real stack: the worker killed with SIGKILL mid-study (with EHR rows
arriving too), Orthanc stopped
and restarted during ingestion. After recovery every instance is in Orthanc and in the
views exactly once, and every series completes once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from cohortstream.admin import ensure_topics
from cohortstream.events import DicomInstanceReceived, DicomSeriesCompleted, EhrRecord, EhrRecordType
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.orthanc_ids import orthanc_hash
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from producers.dicom import DicomListener
from streams.worker import build_worker_app
from tests.dcmtk import STORESCU, start_storescu
from tests.deployed_worker import DeployedWorkers
from tests.integration.test_dicom_pipeline import (
    fresh_seed,
    instance_event,
    per_series,
    views_caught_up,
)
from tests.kafka_probe import read_topic
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


def stack(*args: str) -> None:
    """Run deploy/stack.sh on the stack the tests use (its dir holds the env file)."""
    state_dir = Path(os.environ["COHORTSTREAM_ENV_FILE"]).resolve().parent
    env = {**os.environ, "COHORTSTREAM_STACK_DIR": str(state_dir)}
    subprocess.run([str(ROOT / "deploy" / "stack.sh"), *args], env=env, check=True, timeout=180)


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={"series_quiet_period_s": 2.0, "staging_dir": tmp_path / "staging", "sink_retry_max_delay_s": 1.0}
    )


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Any]:
    client = mongo_client(settings)
    yield mongo_database(client, settings)
    await client.drop_database(settings.mongo_database)
    await client.close()


@pytest.fixture
def study(settings: Settings, tmp_path: Path) -> list[DicomInstanceReceived]:
    store = StagingStore(settings.staging_dir)
    files = write_study(mr_study(n_series=3, slices=20, rows=16, cols=16, seed=fresh_seed()), tmp_path / "study")
    return [instance_event(path, store) for path in files]


async def _publish(settings: Settings, events: list[DicomInstanceReceived]) -> None:
    async with EventPublisher(settings) as publisher:
        for event in events:
            await publisher.publish(event, key=event.series_instance_uid)


def _lab(n: int) -> EhrRecord:
    return EhrRecord(
        producer="test",
        source="mimic-iv",
        source_file="labevents.csv",
        source_row_id=f"row-{n}",
        subject_id=str(10_000 + n % 13),
        record_type=EhrRecordType.LAB,
        effective_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=n),
        code="50912",
        value_number=1.0 + n / 1000,
        unit="mg/dL",
    )


async def _publish_records(settings: Settings, records: list[EhrRecord]) -> None:
    async with EventPublisher(settings) as publisher:
        for record in records:
            await publisher.publish(record, key=record.subject_id)


async def _archived(database: Any) -> int:
    """Instances both archived (archive agent) and folded into the views (views agent)."""
    return int(await database.instances.count_documents({"in_orthanc": True, "received_sha256": {"$exists": True}}))


async def _assert_exactly_once(settings: Settings, database: Any, events: list[DicomInstanceReceived]) -> None:
    per_series: dict[str, int] = {}
    for event in events:
        per_series[event.series_instance_uid] = per_series.get(event.series_instance_uid, 0) + 1
    assert await database.instances.count_documents({}) == len(events)
    series = {d["_id"]: d["instance_count"] async for d in database.series.find({})}
    assert series == per_series
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=30) as orthanc:
        for uid, count in per_series.items():
            first = next(e for e in events if e.series_instance_uid == uid)
            series_id = orthanc_hash(first.patient_id, first.study_instance_uid, uid)
            response = await orthanc.get(f"/series/{series_id}")
            assert response.status_code == 200
            assert len(response.json()["Instances"]) == count
    for event in events:
        assert not Path(event.staged_uri.removeprefix("file://")).exists()


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """Start ``cohortstream worker`` subprocesses with these settings; killed at the end."""
    workers = DeployedWorkers(settings, tmp_path / "worker.log")
    yield workers.start
    workers.kill_all()


async def test_worker_killed_mid_study_loses_and_duplicates_nothing(
    settings: Settings, database: Any, study: list[DicomInstanceReceived], worker_process: Any
) -> None:
    """Mixed EHR + DICOM ingestion, the deployed worker (every lane) killed with SIGKILL."""
    await ensure_topics(settings)
    first_half, second_half = study[:30], study[30:]
    labs = [_lab(n) for n in range(400)]
    victim = worker_process()
    await _publish(settings, first_half)
    await _publish_records(settings, labs[:200])

    async def some_archived() -> bool:
        return await _archived(database) >= 5

    await eventually(some_archived, timeout_s=120, what="the worker to start archiving")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    await _publish(settings, second_half)  # the rest of the study arrives while it is down
    await _publish_records(settings, labs[200:])

    worker_process()

    async def all_archived() -> bool:
        return await views_caught_up(database, per_series(study))

    await eventually(all_archived, timeout_s=180, what="every instance archived after the restart")
    await _assert_exactly_once(settings, database, study)

    async def every_lab_row() -> bool:
        return await database.ehr_timeline.count_documents({}) == len(labs)

    await eventually(every_lab_row, timeout_s=120, what="every EHR row in the timeline after the restart")
    assert {d["_id"] async for d in database.ehr_timeline.find({}, {"_id": 1})} == {
        f"mimic-iv|row-{n}" for n in range(len(labs))
    }


async def test_orthanc_stopped_during_ingestion_pauses_the_archive_then_it_catches_up(
    settings: Settings, database: Any, study: list[DicomInstanceReceived]
) -> None:
    await ensure_topics(settings)
    app = build_worker_app(settings)
    await app.start()
    try:
        first_half, second_half = study[:30], study[30:]
        await _publish(settings, first_half)

        async def first_half_archived() -> bool:
            return await _archived(database) == len(first_half)

        await eventually(first_half_archived, timeout_s=120, what="the first half archived")
        await asyncio.to_thread(stack, "stop", "orthanc")
        try:
            await _publish(settings, second_half)

            async def second_half_viewed() -> bool:
                return await database.instances.count_documents({}) == len(study)

            # The views agent does not need Orthanc and goes on; the archive agent waits.
            await eventually(second_half_viewed, timeout_s=120, what="views of the second half")
            assert await _archived(database) == len(first_half)
            for event in second_half:
                assert Path(event.staged_uri.removeprefix("file://")).exists(), (
                    "staged file dropped before Orthanc had it"
                )
        finally:
            await asyncio.to_thread(stack, "start", "orthanc")

        async def all_archived() -> bool:
            return await views_caught_up(database, per_series(study))

        await eventually(all_archived, timeout_s=120, what="the archive to catch up after Orthanc came back")
        await _assert_exactly_once(settings, database, study)
    finally:
        await app.stop()


async def _storescu_until_accepted(settings: Settings, directory: Path, attempts: int = 3) -> int:
    """Push ``directory`` with dcmtk's storescu, resending like a modality when a store failed."""
    for attempt in range(1, attempts + 1):
        process = await start_storescu(settings, directory)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        if process.returncode == 0:  # dcmtk exits non-zero when any C-STORE did not succeed
            return attempt
    raise AssertionError(f"storescu kept failing after {attempts} attempts: {output.decode(errors='replace')[-2000:]}")


@pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")
async def test_kafka_restarted_between_two_associations(settings: Settings, database: Any, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings.model_copy(
        update={"dicom_scp_port": port, "quarantine_dir": tmp_path / "quarantine", "dicom_scp_publish_timeout_s": 30.0}
    )
    await ensure_topics(settings)
    first = write_study(mr_study(n_series=1, slices=10, rows=16, cols=16, seed=fresh_seed()), tmp_path / "first")
    second = write_study(mr_study(n_series=1, slices=10, rows=16, cols=16, seed=fresh_seed()), tmp_path / "second")
    app = build_worker_app(settings)
    await app.start()
    try:
        with DicomListener(settings):
            await _storescu_until_accepted(settings, tmp_path / "first")
            await asyncio.to_thread(stack, "stop", "kafka")
            await asyncio.to_thread(stack, "start", "kafka")
            await _storescu_until_accepted(settings, tmp_path / "second")

        async def all_archived() -> bool:
            counts = sorted([d.get("instance_count") async for d in database.series.find({})], key=str)
            return await _archived(database) == len(first) + len(second) and counts == [10, 10]

        await eventually(all_archived, timeout_s=180, what="both associations archived after the Kafka restart")
    finally:
        await app.stop()
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in first + second}
    assert {d["_id"] async for d in database.instances.find({})} == sops
    series = [d["instance_count"] async for d in database.series.find({})]
    assert series == [10, 10]


async def test_two_workers_one_killed_the_other_takes_over_and_every_series_completes_once(
    settings: Settings, database: Any, tmp_path: Path
) -> None:
    """Scale-out (issue 13): two deployed workers share every lane's consumer group over
    four partitions; one is killed with SIGKILL mid-ingestion. Its partitions go to the
    other, which restores the series-completion tables from their changelogs: every
    instance lands in Orthanc and the views exactly once, and every series is announced
    as completed exactly once, with every one of its instances counted (read from the
    completion topic). An instance's two table writes are not atomic, and a SIGKILL
    between them once made a series count 11 of 12: the offsets in the tables now make
    the survivor's replay exact (``streams.agents.series_completion.record_instance``).
    And a worker whose partition moved away mid-series kept its in-memory copy of the
    series and once announced it with 4 of 12 instances: only a partition's owner
    announces now (``is_owned``).

    "Exactly once" is per (series, revision), the completion's identity that consumers
    key on: the timer announces before it marks the series closed, so a worker killed
    between the two makes the next owner send the very same completion again."""
    settings = settings.model_copy(update={"topic_partitions": 4, "worker_metrics_port": 0})
    await ensure_topics(settings)
    store = StagingStore(settings.staging_dir)
    files = write_study(mr_study(n_series=6, slices=12, rows=16, cols=16, seed=fresh_seed()), tmp_path / "study6")
    study = [instance_event(path, store) for path in files]
    first_half, second_half = study[: len(study) // 2], study[len(study) // 2 :]
    workers = DeployedWorkers(settings, tmp_path / "workers.log")

    async def ready(n: int) -> bool:
        return workers.ready_count() >= n

    workers.start()  # the survivor
    victim = workers.start()
    try:
        await eventually(lambda: ready(2), timeout_s=180, what="both workers' lanes ready")
        await _publish(settings, first_half)

        async def some_archived() -> bool:
            return await _archived(database) >= 5

        await eventually(some_archived, timeout_s=120, what="the workers to start archiving")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        await _publish(settings, second_half)

        async def all_archived() -> bool:
            return await views_caught_up(database, per_series(study))

        await eventually(all_archived, timeout_s=240, what="every instance archived by the surviving worker")
        await _assert_exactly_once(settings, database, study)

        completions = [r.event for r in await read_topic(settings, "dicom.series-completed", 6, timeout_s=120)]
        assert all(isinstance(completed, DicomSeriesCompleted) for completed in completions)
        announced = {
            (c.series_instance_uid, c.revision, c.instance_count)
            for c in completions
            if isinstance(c, DicomSeriesCompleted)
        }
        expected = {(series, 1, count) for series, count in per_series(study).items()}
        assert announced == expected, "every series completes once, with all of its instances"
    finally:
        workers.kill_all()

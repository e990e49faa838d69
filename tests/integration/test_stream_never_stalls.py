"""Issue 11: one bad batch never stalls the stream, one waiting agent never blocks another.

Against the real stack (Kafka, the MongoDB-wire server, Orthanc):

- a deterministic sink error (a duplicate key on a unique index of the view) is tried a
  few times, then the event is dead-lettered and later events land within seconds;
- the deployed worker (``cohortstream worker``: one process per lane) keeps building the
  EHR views while its DICOM archive lane waits for a stopped Orthanc; ``/readyz`` names
  the stalled lane; a second worker's rebalance goes through, and SIGTERM stops the
  first cleanly, although its sink is paused; every event lands exactly once;
- the REDCap, EHR and annotation agents dead-letter what they cannot apply;
- the view store stopped for a while in the middle of ingestion is backpressure: after
  it is back, everything lands.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_api
from cohortstream.admin import ensure_topics
from cohortstream.events import (
    AnnotationSuggested,
    DicomInstanceReceived,
    EhrRecord,
    EhrRecordType,
    RedcapCompletionStatus,
    RedcapRecordChanged,
    RedcapTrigger,
    SuggestedSegment,
)
from cohortstream.lanes import lane_app_id
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from streams.worker import build_lane_app
from tests.deployed_worker import DeployedWorkers
from tests.integration.test_dicom_faults import stack
from tests.integration.test_dicom_pipeline import fresh_seed, instance_event
from tests.polling import eventually


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return stack_settings.model_copy(
        update={
            "staging_dir": tmp_path / "staging",
            "series_quiet_period_s": 2.0,
            "sink_retry_attempts": 2,
            "sink_retry_max_delay_s": 1.0,
            "sink_error_attempts": 3,
            "consumer_stall_after_s": 3.0,
            "worker_shutdown_timeout_s": 15.0,
        }
    )


def _lab(n: int, *, source: str = "mimic-iv", row: str | None = None) -> EhrRecord:
    return EhrRecord(
        producer="test",
        source=source,
        source_file="labevents.csv",
        source_row_id=row or f"row-{n}",
        subject_id=str(10_000 + n % 7),
        record_type=EhrRecordType.LAB,
        effective_at=datetime(2024, 1, 1, tzinfo=UTC),
        code="50912",
        value_number=1.0 + n / 100,
        unit="mg/dL",
    )


async def _publish(settings: Settings, events: list[Any], key: Any) -> None:
    async with EventPublisher(settings) as publisher:
        for event in events:
            await publisher.publish(event, key=key(event))


async def test_a_deterministic_sink_error_is_dead_lettered_and_later_events_pass(settings: Settings, db: Any) -> None:
    await ensure_topics(settings)
    # A real server-side error that repeats the same way every time: the view has a
    # unique index that one row violates (two sources with the same row id).
    await db["ehr_timeline"].create_index("source_row_id", unique=True)
    before = [_lab(n) for n in range(20)]
    poison = _lab(99, source="other-ehr", row="row-3")
    after = [_lab(n) for n in range(20, 40)]
    app = build_lane_app(settings, "ehr-views")
    letters = build_lane_app(settings, "dead-letters")
    await app.start()
    await letters.start()
    try:
        await _publish(settings, [*before, poison, *after], key=lambda e: e.subject_id)
        started = time.monotonic()

        async def later_rows_applied() -> bool:
            return await db["ehr_timeline"].count_documents(
                {"source_row_id": {"$in": [e.source_row_id for e in after]}}
            ) == len(after)

        await eventually(later_rows_applied, timeout_s=60, what="the rows after the poisoned one in the timeline")
        assert time.monotonic() - started < 30, "later events must not wait behind the failing one"

        async def dead_lettered() -> dict[str, Any] | None:
            found: dict[str, Any] | None = await db["dead_letters"].find_one({"producer": "ehr-views"})
            return found

        letter = await eventually(dead_lettered, timeout_s=60, what="the poisoned row in dead_letters")
        assert "E11000" in letter["reason"] or "duplicate" in letter["reason"].lower()
        assert await db["ehr_timeline"].count_documents({"source": "other-ehr"}) == 0
        assert await db["ehr_timeline"].count_documents({}) == len(before) + len(after)
    finally:
        await app.stop()
        await letters.stop()


def _questionnaire(n: int, project: str = "42") -> RedcapRecordChanged:
    return RedcapRecordChanged(
        producer="test",
        redcap_url="https://redcap.example.org/",
        project_id=project,
        record_id=f"R{n}",
        event_name="baseline_arm_1",
        instrument="baseline",
        completion_status=RedcapCompletionStatus.COMPLETE,
        trigger=RedcapTrigger.FULL_SYNC,
        values={},
    )


def _suggestion(n: int, seg_uid: str | None = None) -> AnnotationSuggested:
    return AnnotationSuggested(
        producer="test",
        study_instance_uid="2.25.1",
        series_instance_uid=f"2.25.1.{n}",
        model_name="m",
        model_version="1",
        seg_sop_instance_uid=seg_uid or f"2.25.9.{n}",
        device="cpu",
        inference_s=0.1,
        segments=[SuggestedSegment(segment_number=1, label="Brain", voxel_count=10, volume_ml=0.01)],
    )


# lane, its agent, the view, the field a test index makes unique, (good events, poison, key)
_DEAD_LETTER_CASES = {
    "redcap-views": (
        "redcap-views",
        "questionnaires",
        "record_id",
        lambda: (
            [_questionnaire(n) for n in range(10)],
            _questionnaire(3, project="43"),
            lambda e: f"{e.project_id}|{e.record_id}",
        ),
    ),
    "annotation-views": (
        "annotation-suggestion-views",
        "annotations",
        "seg_sop_instance_uid",
        lambda: (
            [_suggestion(n) for n in range(10)],
            _suggestion(99, seg_uid="2.25.9.3"),
            lambda e: e.series_instance_uid,
        ),
    ),
}


@pytest.mark.parametrize("lane", sorted(_DEAD_LETTER_CASES))
async def test_redcap_and_annotation_agents_dead_letter_what_they_cannot_apply(
    settings: Settings, db: Any, lane: str
) -> None:
    agent, collection, unique_field, make = _DEAD_LETTER_CASES[lane]
    good, poison, key = make()
    await ensure_topics(settings)
    # Compound and named: the sink's own index on the field must not clash with it.
    await db[collection].create_index(
        [(unique_field, 1), ("producer_test_marker", 1)], unique=True, name="test_unique_poison"
    )
    app, letters = build_lane_app(settings, lane), build_lane_app(settings, "dead-letters")
    await app.start()
    await letters.start()
    try:
        await _publish(settings, [*good[:5], poison, *good[5:]], key=key)

        async def good_applied() -> bool:
            return await db[collection].count_documents({}) == len(good)

        await eventually(good_applied, timeout_s=60, what=f"every good event in {collection}")

        async def dead_lettered() -> dict[str, Any] | None:
            found: dict[str, Any] | None = await db["dead_letters"].find_one({"producer": agent})
            return found

        letter = await eventually(dead_lettered, timeout_s=60, what=f"the poisoned event dead-lettered by {agent}")
        assert "E11000" in letter["reason"] or "duplicate" in letter["reason"].lower()
    finally:
        await app.stop()
        await letters.stop()


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[DeployedWorkers]:
    """The deployed worker (``cohortstream worker``: every lane) with these settings."""
    workers = DeployedWorkers(settings, tmp_path / "worker.log")
    yield workers
    workers.kill_all()


def _dicom_events(settings: Settings, tmp_path: Path) -> list[DicomInstanceReceived]:
    store = StagingStore(settings.staging_dir)
    files = write_study(mr_study(n_series=2, slices=10, rows=16, cols=16, seed=fresh_seed()), tmp_path / "study")
    return [instance_event(path, store) for path in files]


async def test_an_agent_waiting_for_orthanc_blocks_no_other_lets_a_rebalance_through_and_stops_on_sigterm(
    settings: Settings, db: Any, worker_process: Any, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    dicom = _dicom_events(settings, tmp_path)
    labs = [_lab(n) for n in range(30)]

    log_text = worker_process.log_text

    async def workers_ready(n: int) -> bool:
        return await asyncio.to_thread(worker_process.ready_count) >= n

    first = worker_process.start()
    try:
        await eventually(lambda: workers_ready(1), timeout_s=120, what="the worker's lanes ready")
        stack("stop", "orthanc")
        await _publish(settings, dicom[:5], key=lambda e: e.series_instance_uid)

        async def archive_paused() -> bool:
            return "sink paused" in await asyncio.to_thread(log_text)

        await eventually(archive_paused, timeout_s=60, what="the archive lane paused on the stopped Orthanc")
        await _publish(settings, dicom[5:], key=lambda e: e.series_instance_uid)
        await _publish(settings, labs, key=lambda e: e.subject_id)

        async def labs_in_views() -> bool:
            return await db["ehr_timeline"].count_documents({}) == len(labs)

        await eventually(labs_in_views, timeout_s=60, what="EHR rows in the views while the archive waits for Orthanc")
        assert await db["instances"].count_documents({"in_orthanc": True}) == 0

        api = create_api(settings)
        async with (
            api.router.lifespan_context(api),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client,
        ):

            async def archive_stalled() -> dict[str, Any] | None:
                body = (await client.get("/readyz")).json()
                stalled = [s for s in body["stalled"] if s["group"] == lane_app_id(settings, "dicom-archive")]
                return stalled[0] if stalled else None

            stalled = await eventually(archive_stalled, timeout_s=60, what="/readyz naming the stalled archive lane")
        assert stalled["agents"] == ["dicom-archive"] and stalled["topic"] == "dicom.instance-received"
        assert stalled["lag"] == len(dicom)

        # A second worker joins every lane's group: the rebalance goes through although
        # the first worker's archive sink is paused.
        worker_process.start()
        # Within 45 s: below the broker session timeout (60 s), after which the group would
        # drop a blocked member on its own.
        await eventually(lambda: workers_ready(2), timeout_s=45, what="the second worker's lanes through the rebalance")

        # SIGTERM while the archive sink is paused: the worker stops cleanly, in time.
        stopping = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, settings.worker_shutdown_timeout_s + 10)
        assert time.monotonic() - stopping < settings.worker_shutdown_timeout_s
        assert code == 0 and "did not stop in time" not in log_text()
    finally:
        stack("start", "orthanc")

    async def all_archived() -> bool:
        return await db["instances"].count_documents({"in_orthanc": True}) == len(dicom)

    await eventually(all_archived, timeout_s=180, what="every instance archived by the second worker")
    assert await db["instances"].count_documents({}) == len(dicom)
    assert await db["ehr_timeline"].count_documents({}) == len(labs)


async def test_the_view_store_stopped_mid_ingestion_is_backpressure_then_everything_lands(
    settings: Settings, db: Any, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    labs = [_lab(n) for n in range(200)]
    app = build_lane_app(settings, "ehr-views")
    await app.start()
    try:
        await _publish(settings, labs[:100], key=lambda e: e.subject_id)

        async def first_half() -> bool:
            return await db["ehr_timeline"].count_documents({}) == 100

        await eventually(first_half, timeout_s=60, what="the first half in the views")
        stack("stop", "mongo")
        stopped_at = time.monotonic()
        try:
            await _publish(settings, labs[100:], key=lambda e: e.subject_id)
            # Hold the store down for 30 s in all, as an operator's restart might.
            remaining = 30 - (time.monotonic() - stopped_at)
            if remaining > 0:
                await asyncio.sleep(remaining)  # the outage itself, not a wait for an effect
        finally:
            stack("start", "mongo")

        async def everything() -> bool:
            return await db["ehr_timeline"].count_documents({}) == len(labs)

        await eventually(everything, timeout_s=120, what="every row in the views after the store came back")
        assert await db["dead_letters"].count_documents({}) == 0, "an outage is backpressure, never a dead letter"
    finally:
        await app.stop()

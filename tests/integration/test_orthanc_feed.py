"""Orthanc as a source, on the real stack: instances that reach Orthanc without our listener
become events (the change feed), and end in the views, in series completion and in the
cohort query.

The "new user" report this reproduces: patients stored straight into Orthanc's DICOM port
are in Orthanc, and ``POST /cohorts/query {"modalities": ["MR"]}`` did not count them.
Without the feed, :func:`test_instances_stored_straight_into_orthanc_by_three_routes_reach_views_completion_and_cohort`
fails on its first wait (nothing reaches the views).

Orthanc outlives a test and other tests store into it: each test puts the feed's
checkpoint at Orthanc's newest change before it stores anything (what ``now`` does on a
first start), so it reads its own changes only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest

from api.app import create_api
from api.keys import KeyStore
from api.principals import Role
from cohortstream.admin import ensure_topics
from cohortstream.events import (
    ORTHANC_FEED_PRODUCER,
    AnnotationReviewed,
    AnnotationSuggested,
    DicomInstanceReceived,
    DicomSeriesCompleted,
    SuggestedSegment,
)
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings, settings_environment
from cohortstream.synthetic import mr_study, write_study
from producers.dicom import DicomListener
from producers.orthanc.checkpoint import CheckpointStore
from producers.orthanc.feed import run_feed
from producers.orthanc.reconcile import reconcile
from producers.orthanc.status import FeedStatus
from streams.worker import build_worker_app
from tests.dcmtk import STORESCU, start_storescu
from tests.integration.test_dicom_pipeline import fresh_seed
from tests.kafka_probe import read_topic
from tests.listener_settings import listener_settings
from tests.net import free_port
from tests.polling import eventually
from tests.private_orthanc import PrivateOrthanc, start_private_orthanc, stop_private_orthanc

pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return listener_settings(
        stack_settings,
        tmp_path,
        series_quiet_period_s=2.0,
        orthanc_feed_port=0,
        orthanc_feed_poll_interval_s=0.1,
        sink_retry_max_delay_s=1.0,
    )


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Any]:
    await ensure_topics(settings)
    app = build_worker_app(settings)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def orthanc(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=60) as client:
        yield client


class Feed:
    """The feed run in this test's event loop, started and stopped at will."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = FeedStatus()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self.status = FeedStatus()
        self._task = asyncio.create_task(run_feed(self.settings, self._stop, self.status))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
            self._task = None


@pytest.fixture
async def feed(settings: Settings) -> AsyncIterator[Feed]:
    running = Feed(settings)
    yield running
    await running.stop()


async def newest_seq(orthanc: httpx.AsyncClient) -> int:
    return int((await orthanc.get("/changes", params={"last": ""})).json()["Last"])


async def checkpoint_at_orthanc_now(settings: Settings, db: Any, orthanc: httpx.AsyncClient) -> int:
    seq = await newest_seq(orthanc)
    await CheckpointStore(db).reset(seq)
    return seq


async def store_rest(orthanc: httpx.AsyncClient, paths: list[Path]) -> None:
    """As an upload in Orthanc Explorer or a script does: ``POST /instances``."""
    for path in paths:
        response = await orthanc.post("/instances", content=path.read_bytes())
        assert response.status_code == 200, response.text


async def store_stow(client: httpx.AsyncClient, paths: list[Path], route: str = "/dicom-web/studies") -> None:
    """DICOMweb STOW-RS: one multipart/related request with every file (to Orthanc, or to
    the API's DICOMweb proxy with ``route``)."""
    boundary = f"cohortstream-{uuid.uuid4().hex}"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
            for path in paths
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = await client.post(
        route,
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert not answer.get("00081198", {}).get("Value"), response.text  # Failed SOP Sequence: empty
    assert len(answer["00081199"]["Value"]) == len(paths), response.text  # Referenced SOP Sequence


async def store_storescu(settings: Settings, directory: Path) -> None:
    """dcmtk's storescu straight to Orthanc's DICOM port (not our listener)."""
    direct = settings.model_copy(
        update={"dicom_scp_aet": settings.orthanc_aet, "dicom_scp_port": settings.orthanc_dicom_port}
    )
    push = await start_storescu(direct, directory)
    output, _ = await asyncio.wait_for(push.communicate(), timeout=300)
    assert push.returncode == 0, output.decode(errors="replace")[-2000:]


def study_files(tmp_path: Path, name: str, *, patient_id: str, n_series: int = 1, slices: int = 8) -> list[Path]:
    return write_study(
        mr_study(n_series=n_series, slices=slices, rows=32, cols=32, seed=fresh_seed(), patient_id=patient_id),
        tmp_path / name,
    )


def sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def series_counts(paths: list[Path]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in paths:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    return counts


async def views_hold(db: Any, counts: dict[str, int]) -> bool:
    """Every instance folded in and archived, and the series counts refreshed."""
    done = await db.instances.count_documents(
        {"series_instance_uid": {"$in": list(counts)}, "in_orthanc": True, "received_sha256": {"$exists": True}}
    )
    if done != sum(counts.values()):
        return False
    series = {d["_id"]: d.get("instance_count") async for d in db.series.find({"_id": {"$in": list(counts)}})}
    return series == counts


async def completed(settings: Settings, counts: dict[str, int]) -> dict[str, list[DicomSeriesCompleted]]:
    reads = await read_topic(settings, "dicom.series-completed", len(counts), timeout_s=120)
    by_series: dict[str, list[DicomSeriesCompleted]] = {}
    for read in reads:
        assert isinstance(read.event, DicomSeriesCompleted)
        by_series.setdefault(read.event.series_instance_uid, []).append(read.event)
    return by_series


async def test_instances_stored_straight_into_orthanc_by_three_routes_reach_views_completion_and_cohort(
    settings: Settings, db: Any, worker: Any, orthanc: httpx.AsyncClient, feed: Feed, tmp_path: Path
) -> None:
    await checkpoint_at_orthanc_now(settings, db, orthanc)
    feed.start()
    by_dicom = study_files(tmp_path, "dicom", patient_id=f"FEED-DIMSE-{fresh_seed()}")
    by_stow = study_files(tmp_path, "stow", patient_id=f"FEED-STOW-{fresh_seed()}")
    by_rest = study_files(tmp_path, "rest", patient_id=f"FEED-REST-{fresh_seed()}")
    await store_storescu(settings, tmp_path / "dicom")
    await store_stow(orthanc, by_stow)
    await store_rest(orthanc, by_rest)
    counts = series_counts(by_dicom + by_stow + by_rest)

    await eventually(lambda: views_hold(db, counts), timeout_s=120, what="the views to hold every instance")
    assert {d["_id"] async for d in db.instances.find({})} == sop_uids(by_dicom + by_stow + by_rest)
    origins = {d["patient_id"].split("-")[1]: d.get("orthanc_origin") async for d in db.instances.find({})}
    assert origins == {"DIMSE": "DicomProtocol", "STOW": "Plugins", "REST": "RestApi"}
    dimse = await db.instances.find_one({"patient_id": {"$regex": "^FEED-DIMSE"}})
    assert dimse["calling_aet"] == "STORESCU"

    finished = await completed(settings, counts)
    assert {uid: [e.instance_count for e in events] for uid, events in finished.items()} == {
        uid: [n] for uid, n in counts.items()
    }

    app = create_api(settings)
    key = await KeyStore(db).create("new-user", Role.RESEARCHER)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):

        async def counted() -> dict[str, Any] | None:
            response = await client.post(
                "/cohorts/query", json={"modalities": ["MR"]}, headers={"Authorization": f"Bearer {key.key}"}
            )
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body if body["count"] == 3 else None

        answer = await eventually(counted, timeout_s=60, what="the cohort query to count the three patients")
        assert answer["per_criterion"] == {"modality MR": 3}
    assert feed.status.as_json()["status"] == "ok"


async def test_an_instance_seen_by_the_listener_and_the_feed_counts_once(
    settings: Settings, db: Any, worker: Any, orthanc: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Both routes publish every instance (the feed does not skip what the views know):
    the views and series completion are idempotent by SOP Instance UID."""
    both = settings.model_copy(update={"orthanc_feed_skip_known": False})
    feed = Feed(both)
    await checkpoint_at_orthanc_now(both, db, orthanc)
    feed.start()
    try:
        paths = study_files(tmp_path, "study", patient_id=f"FEED-BOTH-{fresh_seed()}", n_series=2, slices=10)
        counts = series_counts(paths)
        with DicomListener(both):
            push = await start_storescu(both, tmp_path / "study")
            output, _ = await asyncio.wait_for(push.communicate(), timeout=300)
            assert push.returncode == 0, output.decode(errors="replace")[-2000:]
        # Both copies of every instance are on the topic: the listener's and the feed's.
        reads = await read_topic(both, "dicom.instance-received", 2 * len(paths), timeout_s=120)
        producers = [r.event.producer for r in reads if isinstance(r.event, DicomInstanceReceived)]
        assert sorted(set(producers)) == ["dicom-scp", ORTHANC_FEED_PRODUCER]
        assert producers.count(ORTHANC_FEED_PRODUCER) == len(paths)
        await eventually(lambda: views_hold(db, counts), timeout_s=120, what="the views")
        assert await db.instances.count_documents({}) == len(paths)
        finished = await completed(both, counts)
        assert {uid: [(e.revision, e.instance_count) for e in events] for uid, events in finished.items()} == {
            uid: [(1, n)] for uid, n in counts.items()
        }
    finally:
        await feed.stop()


async def test_the_feed_killed_mid_backfill_and_restarted_gives_exact_counts(
    settings: Settings, db: Any, worker: Any, orthanc: httpx.AsyncClient, tmp_path: Path
) -> None:
    small_pages = settings.model_copy(update={"orthanc_feed_page_size": 5})
    before = await checkpoint_at_orthanc_now(small_pages, db, orthanc)
    paths = study_files(tmp_path, "study", patient_id=f"FEED-KILL-{fresh_seed()}", n_series=3, slices=60)
    counts = series_counts(paths)
    await store_storescu(small_pages, tmp_path / "study")  # the archive already holds them: a backfill
    end = await newest_seq(orthanc)

    env = {**os.environ, **settings_environment(small_pages), "COHORTSTREAM_LOG_FORMAT": "console"}
    env.pop("COHORTSTREAM_ENV_FILE", None)
    log_path = tmp_path / "feed.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "cohortstream.cli", "orthanc", "feed"], env=env, stdout=log, stderr=log
            )

    store = CheckpointStore(db)
    first = start()
    second: subprocess.Popen[bytes] | None = None
    try:
        # A tight poll (the pages follow each other quickly): kill as soon as the first
        # pages are acknowledged and checkpointed, bounded by a deadline.
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            checkpoint = await store.load()
            if checkpoint is not None and checkpoint.seq > before:
                break
            assert asyncio.get_running_loop().time() < deadline, log_path.read_text()[-3000:]
            await asyncio.sleep(0.01)  # poll interval
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 30)
        killed_at = await store.load()
        assert killed_at is not None and before < killed_at.seq < end, "the kill did not land mid-backfill"
        second = start()
        await eventually(lambda: views_hold(db, counts), timeout_s=180, what="the views after the restart")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, 30)
    assert second is not None and second.returncode == 0, log_path.read_text()[-3000:]
    assert await db.instances.count_documents({}) == len(paths)
    assert {d["_id"]: d["instance_count"] async for d in db.series.find({})} == counts

    # A series whose first instances came before the kill may complete early (the feed
    # was down longer than the 2 s quiet period) and again, as revision 2, once the rest
    # arrived: the latest revision counts every instance exactly once.
    async def final_completions() -> dict[str, list[DicomSeriesCompleted]] | None:
        finished = await completed(small_pages, counts)
        latest = {uid: max(events, key=lambda e: e.revision) for uid, events in finished.items()}
        return finished if {uid: e.instance_count for uid, e in latest.items()} == counts else None

    finished = await eventually(final_completions, timeout_s=120, what="every series completed with all instances")
    for events in finished.values():
        assert [e.revision for e in events] == list(range(1, len(events) + 1))
        assert all(e.instance_count <= counts[e.series_instance_uid] for e in events)
    # No flood: at most the page in flight at the kill was published twice.
    reads = await read_topic(small_pages, "dicom.instance-received", len(paths), timeout_s=60, drain_s=1.0)
    assert len(paths) <= len(reads) <= len(paths) + small_pages.orthanc_feed_page_size


async def test_a_checkpoint_out_of_orthanc_s_log_is_reported_and_reconcile_publishes_what_is_missing(
    settings: Settings, db: Any, worker: Any, orthanc: httpx.AsyncClient, tmp_path: Path
) -> None:
    with_status = settings.model_copy(update={"orthanc_feed_port": free_port()})
    feed = Feed(with_status)
    before = await checkpoint_at_orthanc_now(with_status, db, orthanc)
    lost = study_files(tmp_path, "lost", patient_id=f"FEED-LOST-{fresh_seed()}", slices=6)
    await store_rest(orthanc, lost)  # while the feed is stopped
    assert (await orthanc.delete("/changes")).status_code == 200  # the log forgets them
    later = study_files(tmp_path, "later", patient_id=f"FEED-LATER-{fresh_seed()}", slices=4)
    await store_rest(orthanc, later)
    feed.start()
    try:
        await eventually(lambda: views_hold(db, series_counts(later)), timeout_s=120, what="the later study")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{with_status.orthanc_feed_port}") as status:
            health = (await status.get("/healthz")).json()
            metrics = (await status.get("/metrics")).text
        assert health["status"] == "degraded"
        assert health["gap"]["after_seq"] == before and health["gap"]["remedy"] == "cohortstream orthanc reconcile"
        assert "cohortstream_orthanc_feed_gap 1.0" in metrics
        assert "cohortstream_orthanc_feed_lag_changes" in metrics
        assert await db.instances.count_documents({"patient_id": {"$regex": "^FEED-LOST"}}) == 0
        checkpoint = await CheckpointStore(db).load()
        assert checkpoint is not None and checkpoint.gap is not None

        study_uid = str(pydicom.dcmread(lost[0], stop_before_pixels=True).StudyInstanceUID)
        report = await reconcile(with_status, studies=[study_uid])
        assert (report.in_orthanc, report.published, report.already_in_views) == (len(lost), len(lost), 0)
        await eventually(lambda: views_hold(db, series_counts(lost)), timeout_s=120, what="the reconciled study")
        again = await reconcile(with_status, studies=[study_uid])
        assert (again.published, again.already_in_views) == (0, len(lost))
    finally:
        await feed.stop()


@pytest.fixture
def private_orthanc(tmp_path: Path) -> Iterator[PrivateOrthanc]:
    state_dir = tmp_path / "private-orthanc"
    try:
        yield start_private_orthanc(state_dir)
    finally:
        stop_private_orthanc(state_dir)


async def test_a_first_start_backfills_from_change_zero_and_a_full_reconcile_clears_a_gap(
    settings: Settings, db: Any, private_orthanc: PrivateOrthanc, tmp_path: Path
) -> None:
    """Against an archive of the test's own (the shared one fills up as the suite runs):
    a feed that never ran, with ``orthanc_feed_start=backfill``, publishes everything
    Orthanc already holds, from its first change. Then changes fall out of Orthanc's log
    while the feed is stopped: the feed reports the gap, and a *full* reconciliation (no
    study given) publishes exactly the instances the views lack and clears the gap, which
    the running feed then stops reporting."""
    own = private_orthanc.settings(settings).model_copy(update={"orthanc_feed_start": "backfill"})
    await ensure_topics(own)
    worker = build_worker_app(own)
    await worker.start()
    feed = Feed(own)
    auth = (own.orthanc_username, own.orthanc_password.get_secret_value())
    try:
        async with httpx.AsyncClient(base_url=own.orthanc_url, auth=auth, timeout=60) as orthanc:
            before = study_files(tmp_path, "before", patient_id=f"FEED-ZERO-{fresh_seed()}", n_series=2, slices=5)
            await store_rest(orthanc, before)
            assert await CheckpointStore(db).load() is None, "a first start"
            feed.start()
            await eventually(lambda: views_hold(db, series_counts(before)), timeout_s=120, what="the backfill")
            await feed.stop()

            lost = study_files(tmp_path, "lost", patient_id=f"FEED-GAP-{fresh_seed()}", slices=6)
            await store_rest(orthanc, lost)
            assert (await orthanc.delete("/changes")).status_code == 200  # the log forgets them
            later = study_files(tmp_path, "later", patient_id=f"FEED-AFTER-{fresh_seed()}", slices=4)
            await store_rest(orthanc, later)
            feed.start()
            await eventually(lambda: views_hold(db, series_counts(later)), timeout_s=120, what="the later study")
            assert feed.status.gap is not None, "the gap is reported"
            assert await db.instances.count_documents({"patient_id": {"$regex": "^FEED-GAP"}}) == 0

            report = await reconcile(own)  # every instance in Orthanc
            total = len(before) + len(lost) + len(later)
            assert (report.in_orthanc, report.published, report.already_in_views) == (
                total,
                len(lost),
                len(before) + len(later),
            )
            await eventually(lambda: views_hold(db, series_counts(lost)), timeout_s=120, what="the reconciled study")
            checkpoint = await CheckpointStore(db).load()
            assert checkpoint is not None and checkpoint.gap is None

            async def gap_cleared() -> bool:
                return feed.status.gap is None

            await eventually(gap_cleared, timeout_s=30, what="the running feed to stop reporting the gap")
        assert await db.instances.count_documents({}) == total
    finally:
        await feed.stop()
        await worker.stop()


def _manual_seg(paths: list[Path]) -> pydicom.Dataset:
    import numpy as np

    sources = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: int(d.InstanceNumber))
    mask = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=np.uint8)
    mask[1:3, 8:20, 8:20] = 1
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="lesion, corrected",
                segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
                segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="a viewer",
        manufacturer_model_name="viewer",
        software_versions="1",
        device_serial_number="0",
        content_creator_name="Doe^Jane",
        content_label="CORRECTION",
    )
    return seg


async def test_a_seg_saved_from_the_viewer_through_the_proxy_is_a_correction_in_the_review_history(
    settings: Settings, db: Any, worker: Any, orthanc: httpx.AsyncClient, feed: Feed, tmp_path: Path
) -> None:
    paths = study_files(tmp_path, "study", patient_id=f"FEED-SEG-{fresh_seed()}", slices=5)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    suggestion = AnnotationSuggested(
        producer="test",
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        model_name="phantom-sphere-unet",
        model_version="1.0.0",
        seg_sop_instance_uid=hd.UID(),
        segments=[SuggestedSegment(segment_number=1, label="lesion", voxel_count=10, volume_ml=0.1)],
        device="cpu",
        inference_s=0.1,
    )
    async with EventPublisher(settings) as publisher:
        await publisher.publish(suggestion, key=suggestion.series_instance_uid)
    key = str(suggestion.annotation_id)

    async def suggested() -> bool:
        return await db.annotations.find_one({"_id": key, "suggested_at": {"$exists": True}}) is not None

    await eventually(suggested, timeout_s=60, what="the suggestion in the view")
    await checkpoint_at_orthanc_now(settings, db, orthanc)
    feed.start()
    seg = _manual_seg(paths)
    seg_file = tmp_path / "seg.dcm"
    seg.save_as(seg_file)
    # As the OHIF viewer saves its work: STOW-RS to its DICOMweb source, the API's proxy,
    # in an annotator's browser session (issue 16); Orthanc's change feed does the rest.
    api = create_api(settings)
    annotator_key = (await KeyStore(db).create("viewer", Role.ANNOTATOR)).key
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api", timeout=60) as browser,
    ):
        login = await browser.post("/login", data={"key": annotator_key, "next": "/ohif/"})
        assert login.status_code == 303, login.text
        await store_stow(browser, [seg_file], "/proxy/dicom/wado/studies")
    content_at = datetime.strptime(f"{seg.ContentDate}{str(seg.ContentTime)[:6]}", "%Y%m%d%H%M%S").replace(tzinfo=UTC)

    async def corrected() -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await db.annotations.find_one({"_id": key, "status": "corrected"})
        return doc

    doc = await eventually(corrected, timeout_s=120, what="the correction in the review history")
    entry = next(h for h in doc["history"] if h["status"] == "corrected")
    assert entry["outside_api"] is True and entry["by"] == "Jane Doe"
    assert entry["seg_sop_instance_uid"] == str(seg.SOPInstanceUID)
    assert abs((entry["at"] - content_at).total_seconds()) < 1
    assert doc["reviewer"] == "Jane Doe" and doc["corrected_seg_sop_instance_uid"] == str(seg.SOPInstanceUID)
    reads = await read_topic(settings, "annotation.reviewed", 1, timeout_s=30, drain_s=1.0)
    assert [type(r.event) for r in reads] == [AnnotationReviewed]
    assert reads[0].event.producer == ORTHANC_FEED_PRODUCER

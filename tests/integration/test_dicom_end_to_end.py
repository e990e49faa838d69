"""From real DICOM clients to Orthanc and the views: dcmtk's storescu and pynetdicom's
storescu push pydicom's files and a generated 3 × 60 MR study through the listener and
the worker; Orthanc and MongoDB then hold exactly what was sent, matched by
SOPInstanceUID and sha256. Also: series completion fires once, and again with a new
revision when a late instance arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cohortstream.admin import ensure_topics
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from producers.dicom import DicomListener
from streams.worker import build_worker_app
from tests.integration.test_dicom_pipeline import (
    completions,
    forget_in_orthanc,
    fresh_seed,
    instance_event,
)
from tests.listener_settings import listener_settings
from tests.polling import eventually

STORESCU = "/usr/bin/storescu"
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
)


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return listener_settings(stack_settings, tmp_path, series_quiet_period_s=2.0)


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Any]:
    """Listener + worker on the real stack; yields the MongoDB database of the views."""
    await ensure_topics(settings)
    app = build_worker_app(settings)
    client = mongo_client(settings)
    await app.start()
    try:
        with DicomListener(settings):
            yield mongo_database(client, settings)
    finally:
        await app.stop()
        await client.drop_database(settings.mongo_database)
        await client.close()


async def _exec(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, "TCP_NODELAY": "1"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    # Both clients exit 0 even when a single C-STORE failed; they log it as an error.
    errors = [line for line in text.splitlines() if line.startswith(("E:", "F:"))]
    assert not errors, "\n".join(errors[:20])


@pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")
async def test_what_storescu_sends_is_what_orthanc_and_the_views_hold(
    running: Any, settings: Settings, tmp_path: Path
) -> None:
    database = running
    dcmtk_dir, pynetdicom_dir = tmp_path / "dcmtk", tmp_path / "pynetdicom"
    study = write_study(
        mr_study(n_series=3, slices=60, rows=32, cols=32, seed=fresh_seed(), patient_id=f"E2E-{uuid.uuid4().hex[:6]}"),
        dcmtk_dir,
    )
    pynetdicom_dir.mkdir()
    extra = [Path(shutil.copy(get_testdata_file(name), pynetdicom_dir / name)) for name in PYDICOM_FILES]
    await forget_in_orthanc(settings, extra)
    # dcmtk sends the study (proposing only what each file needs); pynetdicom's own
    # storescu app sends pydicom's files in their own transfer syntaxes.
    await _exec(
        STORESCU,
        "-R",
        "+sd",
        "+r",
        "-aet",
        "DCMTK",
        "-aec",
        settings.dicom_scp_aet,
        "127.0.0.1",
        str(settings.dicom_scp_port),
        str(dcmtk_dir),
    )
    # -cx: propose exactly the contexts the files need (as dcmtk's -R), or pynetdicom
    # offers only uncompressed syntaxes and cannot send the JPEG files at all.
    await _exec(
        sys.executable,
        "-m",
        "pynetdicom",
        "storescu",
        "-cx",
        "-aet",
        "PYNETDICOM",
        "-aec",
        settings.dicom_scp_aet,
        "127.0.0.1",
        str(settings.dicom_scp_port),
        *map(str, extra),
    )
    # MR_small_RLE.dcm is MR_small.dcm re-encoded with the same SOPInstanceUID: a second
    # copy of one instance. The first copy received is the one archived and described.
    sent: dict[str, Path] = {}
    copies: dict[str, set[str]] = {}
    for path in study + extra:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        sent.setdefault(uid, path)
        copies.setdefault(uid, set()).add(hashlib.sha256(path.read_bytes()).hexdigest())

    async def all_archived() -> bool:
        done = await database.instances.count_documents({"in_orthanc": True, "received_sha256": {"$exists": True}})
        counts = sorted(
            [d.get("instance_count") async for d in database.series.find({"patient_id": {"$regex": "^E2E-"}})], key=str
        )
        return done == len(sent) and counts == [60, 60, 60]

    try:
        await eventually(all_archived, timeout_s=180, what="every sent instance in Orthanc and the views")
    except AssertionError as exc:
        archived = {
            d["_id"] async for d in database.instances.find({"in_orthanc": True, "received_sha256": {"$exists": True}})
        }
        missing = sorted(str(sent[uid].name) for uid in set(sent) - archived)
        raise AssertionError(f"{exc}; {len(missing)} missing: {missing[:20]}") from exc

    docs = {d["_id"]: d async for d in database.instances.find({})}
    assert set(docs) == set(sent)
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=60) as orthanc:
        for sop_uid, doc in docs.items():
            stored = (await orthanc.get(f"/instances/{doc['orthanc_id']}/file")).content
            # Orthanc keeps the staged bytes as they are; their hash is the event's.
            assert hashlib.sha256(stored).hexdigest() == doc["sha256"]
            assert len(doc["received_sha256"]) == len(copies[sop_uid])
            original = pydicom.dcmread(sent[sop_uid])
            received = pydicom.dcmread(io.BytesIO(stored))
            assert received.SOPInstanceUID == sop_uid
            assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            # The data set itself arrived byte for byte (only the file meta is the listener's).
            if "PixelData" in original:
                assert received.PixelData == original.PixelData
    series = {d["_id"]: d["instance_count"] async for d in database.series.find({"patient_id": {"$regex": "^E2E-"}})}
    assert sorted(series.values()) == [60, 60, 60]
    assert not list(StagingStore(settings.staging_dir).iter_staged()), "staged files left after archiving"


async def test_a_series_completes_once_and_again_with_a_new_revision_after_a_late_instance(
    running: Any, settings: Settings, tmp_path: Path
) -> None:
    files = write_study(mr_study(n_series=1, slices=4, rows=8, cols=8, seed=fresh_seed()), tmp_path / "s")
    store = StagingStore(settings.staging_dir)
    events = [instance_event(p, store) for p in files]
    on_time, late = events[:3], events[3]
    async with EventPublisher(settings) as publisher:
        for event in [*on_time, on_time[0]]:  # and a resent copy
            await publisher.publish(event, key=event.series_instance_uid)
        (first,) = await completions(settings, 1)
        assert (first.revision, first.instance_count) == (1, 3)
        await publisher.publish(late, key=late.series_instance_uid)
        await publisher.publish(on_time[1], key=late.series_instance_uid)  # old copy: no new revision
        both = await completions(settings, 2)
    assert [(c.revision, c.instance_count) for c in both] == [(1, 3), (2, 4)]
    assert both[1].last_received_at >= both[0].last_received_at
    # Nothing more fires for this series: the duplicate did not re-open it.
    with pytest.raises(asyncio.TimeoutError):
        await completions(settings, 3, timeout_s=3 * settings.series_quiet_period_s + 2)

"""Issue 11's step-by-step case, with data generated here, on the real stack.

As a new user did: an EHR extract loaded with ``cohortstream ehr load`` (once stalled the
worker for ever on a reply the old store sent), MR slices pushed by dcmtk through the
listener (all acknowledged), the deployed worker killed with SIGKILL mid-way and started
again. Then: every EHR row is in the views and counted by ``/statistics``, every
acknowledged instance is in Orthanc and in the views exactly once, nothing is left in
staging, and ``/readyz`` is ready with no stalled consumer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from api.app import create_api
from api.kafka_offsets import read_offsets
from api.keys import KeyStore
from api.principals import Role
from cohortstream.admin import ensure_topics
from cohortstream.settings import Settings, settings_environment
from cohortstream.synthetic import mr_study, write_study
from cohortstream.synthetic_ehr import main as synthetic_ehr
from producers.dicom import DicomListener
from tests.dcmtk import STORESCU, start_storescu
from tests.deployed_worker import DeployedWorkers
from tests.integration.test_dicom_pipeline import fresh_seed
from tests.listener_settings import listener_settings
from tests.polling import eventually

pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed (tests/run.sh installs it)")


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return listener_settings(
        stack_settings,
        tmp_path,
        dicom_scp_publish_timeout_s=20.0,
        series_quiet_period_s=2.0,
        sink_retry_max_delay_s=1.0,
        consumer_stall_after_s=5.0,
    )


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    environment = {**os.environ, **settings_environment(settings), "COHORTSTREAM_LOG_FORMAT": "console"}
    environment.pop("COHORTSTREAM_ENV_FILE", None)
    return environment


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[DeployedWorkers]:
    workers = DeployedWorkers(settings, tmp_path / "worker.log")
    yield workers
    workers.kill_all()


async def test_ehr_load_then_dicom_then_sigkill_and_restart_all_lands_and_nothing_stalls(
    settings: Settings, db: Any, env: dict[str, str], worker: Any, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    first = worker.start()
    await eventually(
        lambda: asyncio.to_thread(lambda: worker.ready_count() >= 1), timeout_s=120, what="the worker's lanes ready"
    )

    # 1-2. The EHR extract, loaded with the CLI as the README shows.
    extract = tmp_path / "ehr"
    assert synthetic_ehr([str(extract), "--seed", "7", "--subjects", "60", "--fhir-patients", "5"]) == 0
    load = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cohortstream.cli", "ehr", "load", str(extract), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert load.returncode == 0, load.stderr[-2000:]

    # 4. MR slices through the listener, all acknowledged (storescu exits 0 only then).
    study = write_study(mr_study(n_series=3, slices=40, rows=32, cols=32, seed=fresh_seed()), tmp_path / "study")
    with DicomListener(settings):
        push = await start_storescu(settings, tmp_path / "study")

        async def some_archived() -> bool:
            return await db["instances"].count_documents({"in_orthanc": True}) >= 10

        await eventually(some_archived, timeout_s=120, what="the archive to start")
        first.send_signal(signal.SIGKILL)  # mid-ingestion
        await asyncio.to_thread(first.wait, 30)
        output, _ = await asyncio.wait_for(push.communicate(), timeout=300)
        assert push.returncode == 0, output.decode(errors="replace")[-2000:]

    worker.start()  # 5. started again
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study}

    async def everything_landed() -> bool:
        offsets = await read_offsets(settings)
        return (
            await db["instances"].count_documents({"in_orthanc": True}) == len(sops)
            and await db["ehr_timeline"].count_documents({}) == offsets.end.get("ehr.record", -1) > 0
        )

    await eventually(everything_landed, timeout_s=240, what="every instance archived and every EHR row in the views")
    assert {d["_id"] async for d in db["instances"].find({}, {"_id": 1})} == sops
    assert sorted([d["instance_count"] async for d in db["series"].find({})]) == [40, 40, 40]
    assert not any(p.is_file() for p in settings.staging_dir.rglob("*")), "an acknowledged instance stayed in staging"
    auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    async with httpx.AsyncClient(base_url=settings.orthanc_url, auth=auth, timeout=30) as orthanc:
        found = (
            await orthanc.post(
                "/tools/find",
                json={
                    "Level": "Instance",
                    "Query": {
                        "SeriesInstanceUID": "\\".join(
                            sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in study})
                        )
                    },
                },
            )
        ).json()
    assert len(found) == len(sops)

    # 3 and 6 as they should be: the rows are counted, and readiness tells the truth.
    api = create_api(settings)
    key = await KeyStore(db).create("stall-case", Role.RESEARCHER)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client,
    ):

        async def counted() -> dict[str, Any] | None:
            body: dict[str, Any] = (
                await client.get("/statistics", headers={"Authorization": f"Bearer {key.key}"})
            ).json()
            return body if body["totals"]["ehr_records"] > 0 else None

        statistics = await eventually(counted, timeout_s=60, what="EHR rows in /statistics")
        assert statistics["totals"]["ehr_records"] == await db["ehr_timeline"].count_documents({})
        readiness = (await client.get("/readyz")).json()
        assert readiness["status"] == "ready" and readiness["stalled"] == []

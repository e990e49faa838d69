"""Several listener processes on one port (``COHORTSTREAM_DICOM_SCP_PROCESSES``, issue 13).

``cohortstream dicom-scp`` with two processes, as deployed: both bind the port with
SO_REUSEPORT and print that they are ready; four dcmtk ``storescu`` associations at once
push one study; every instance is acknowledged, staged once and published once; SIGTERM
stops the whole group cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cohortstream.admin import ensure_topics
from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings, settings_environment
from cohortstream.staging import StagingStore
from cohortstream.synthetic import mr_study, write_study
from producers.dicom.listener import READY_MARKER
from producers.dicom.processes import READY_LINE
from tests.dcmtk import start_storescu
from tests.kafka_probe import read_topic
from tests.listener_settings import listener_settings
from tests.polling import eventually


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    return listener_settings(stack_settings, tmp_path, dicom_scp_processes=2)


@pytest.fixture
def listener_group(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log_path = tmp_path / "listener.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cohortstream.cli", "dicom-scp"],
            env=os.environ | settings_environment(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


async def test_two_listener_processes_share_the_port_and_publish_each_instance_once(
    settings: Settings, listener_group: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    await ensure_topics(settings)
    process, log_path = listener_group

    async def ready() -> bool:
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        return READY_LINE in log_path.read_text(errors="replace")

    await eventually(ready, timeout_s=60, what="both listener processes to say they are ready")
    assert log_path.read_text(errors="replace").count(READY_MARKER) == 2

    study = mr_study(n_series=4, slices=6, rows=16, cols=16, seed=4242)
    parts = [write_study(study[i * 6 : (i + 1) * 6], tmp_path / f"part-{i}") for i in range(4)]
    senders = [await start_storescu(settings, tmp_path / f"part-{i}") for i in range(len(parts))]
    outputs = await asyncio.gather(*(sender.communicate() for sender in senders))
    for sender, (output, _) in zip(senders, outputs, strict=True):
        assert sender.returncode == 0, output.decode(errors="replace")

    records = await read_topic(settings, "dicom.instance-received", len(study), timeout_s=60, drain_s=1.0)
    events = [r.event for r in records if isinstance(r.event, DicomInstanceReceived)]
    assert sorted(e.sop_instance_uid for e in events) == sorted(str(ds.SOPInstanceUID) for ds in study)
    staged = list(StagingStore(settings.staging_dir).iter_staged())
    assert {s.sha256 for s in staged} == {e.sha256 for e in events}

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0

"""The deployed worker starts cleanly on a fresh stack, as after ``make up``.

Found when using the system as a new user: the first ``make up`` left a dozen ERROR
lines in the worker's log ("Topic ...-dicom-series-activity-v2-changelog not found in
cluster metadata", from aiokafka), because series completion asked for its changelog's
partitions before anything had created that topic. An operator reading ERROR lines in a
healthy start-up learns to ignore them, so none may appear.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cohortstream.admin import ensure_topics
from cohortstream.settings import Settings
from tests.deployed_worker import DeployedWorkers
from tests.polling import eventually

# The console format's level column (cohortstream/logs.py): "<time> <pid> ERROR   <logger>: ..."
_ERROR_LINE = re.compile(r"^\S+ \S+ \d+ (ERROR|CRITICAL)\b.*$", re.MULTILINE)


@pytest.fixture
def worker(stack_settings: Settings, tmp_path: Path) -> Iterator[DeployedWorkers]:
    workers = DeployedWorkers(stack_settings, tmp_path / "worker.log")
    yield workers
    workers.kill_all()


async def test_a_fresh_worker_logs_no_error_while_starting(stack_settings: Settings, worker: DeployedWorkers) -> None:
    await ensure_topics(stack_settings)  # what `make up` does before it starts the worker
    worker.start()
    await eventually(
        lambda: asyncio.to_thread(lambda: worker.ready_count() >= 1), timeout_s=120, what="the worker's lanes ready"
    )
    # Series completion asks for its changelog's metadata when its agent starts.
    await eventually(
        lambda: asyncio.to_thread(lambda: "changelog topic ready" in worker.log_text()),
        timeout_s=60,
        what="series completion's changelog topic",
    )
    errors = [line.group(0) for line in _ERROR_LINE.finditer(worker.log_text())]
    assert not errors, "\n".join(errors)

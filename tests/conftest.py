"""Shared fixtures. Integration tests read the running stack's settings from the env file
that ``deploy/stack.sh up`` writes (``COHORTSTREAM_ENV_FILE``, set by ``make test``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cohortstream.settings import Settings


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    """Settings for the real local stack, isolated per test: own topics, group, data dir."""
    env_file = os.environ.get("COHORTSTREAM_ENV_FILE")
    if not env_file:
        pytest.fail(
            "integration tests need the local stack: run `make test`, or `deploy/stack.sh up` and "
            "set COHORTSTREAM_ENV_FILE=<state dir>/stack.env"
        )
    unique = uuid.uuid4().hex[:10]
    return Settings.load(
        env_file,
        topic_prefix=f"it-{unique}.",
        app_id=f"it-{unique}",
        mongo_database=f"it_{unique}",
        data_dir=tmp_path / "app",
        topic_partitions=1,
        log_format="console",
    )

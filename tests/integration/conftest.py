"""Every test in this folder runs against the real stack. Fixtures shared by its modules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.settings import Settings, settings_environment


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Any]:
    """The test's views database (each module's ``settings`` names it), dropped afterwards."""
    client = mongo_client(settings)
    try:
        yield mongo_database(client, settings)
    finally:
        await client.drop_database(settings.mongo_database)
        client.close()


@pytest.fixture
def cli_env(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The environment that makes ``cohortstream.cli.main([...])`` use this test's settings.

    The CLI runs its own event loop (asyncio.run): tests using this are synchronous, or
    call ``main`` from a thread.
    """
    for name, value in settings_environment(stack_settings).items():
        monkeypatch.setenv(name, value)
    yield stack_settings

    async def drop() -> None:
        client = mongo_client(stack_settings)
        await client.drop_database(stack_settings.mongo_database)
        client.close()

    asyncio.run(drop())

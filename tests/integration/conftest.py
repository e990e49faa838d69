"""Every test in this folder runs against the real stack. Fixtures shared by its modules."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.settings import Settings, settings_environment


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


#: Set to 1 to let an integration run pass although tests skipped (e.g. on a machine
#: without chromium, on purpose). Without it, a skip fails the run: a missing tool must not
#: turn a real test into a silent pass.
ALLOW_SKIPS_VAR = "COHORTSTREAM_TEST_ALLOW_SKIPS"


def _integration_skips(reporter: Any) -> list[Any]:
    """The skip reports (collection or test) of tests under tests/integration/."""
    if reporter is None:
        return []
    return [
        report
        for report in reporter.stats.get("skipped", [])
        if "tests/integration/" in report.nodeid.replace("\\", "/")
        or "tests/integration/" in str(getattr(report, "fspath", "")).replace("\\", "/")
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail an otherwise green run when an integration test skipped (unless allowed)."""
    if os.environ.get(ALLOW_SKIPS_VAR) == "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if _integration_skips(reporter) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = _integration_skips(terminalreporter)
    if not skipped:
        return
    allowed = os.environ.get(ALLOW_SKIPS_VAR) == "1"
    terminalreporter.write_sep("=", f"{len(skipped)} integration test(s) skipped", red=not allowed, yellow=allowed)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
    terminalreporter.write_line(
        f"allowed by {ALLOW_SKIPS_VAR}=1"
        if allowed
        else f"the run fails: install what is missing (tests/run.sh does), or set {ALLOW_SKIPS_VAR}=1 on purpose"
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Any]:
    """The test's views database (each module's ``settings`` names it), dropped afterwards."""
    client = mongo_client(settings)
    try:
        yield mongo_database(client, settings)
    finally:
        await client.drop_database(settings.mongo_database)
        await client.close()


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
        await client.close()

    asyncio.run(drop())


def _chromium() -> str | None:
    """The Chromium the browser tests drive (Debian's package, tests/run.sh installs it)."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def chromium() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install chromium; tests/run.sh installs it)")
    return path

"""``make up LISTENER_NICE=N``: the command prefix deploy/lib/listener.sh starts the
listener with, and its refusal of values ``nice`` would not take as meant."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.stack_script import REPO

_PROBE = """
log() { printf 'stack: %s\\n' "$*" >&2; }
. "$1/deploy/lib/listener.sh"
prefix="$(listener_nice_prefix)" || exit 3
printf '%s' "$prefix"
"""


def _prefix(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COHORTSTREAM_STACK_LISTENER_NICE"}
    if value is not None:
        env["COHORTSTREAM_STACK_LISTENER_NICE"] = value
    return subprocess.run(
        ["bash", "-c", _PROBE, "probe", str(REPO)], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("value", [None, "", "0", "00"])
def test_by_default_the_listener_starts_as_is(value: str | None) -> None:
    result = _prefix(value)
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize(("value", "prefix"), [("10", "nice -n 10"), ("08", "nice -n 8"), ("19", "nice -n 19")])
def test_a_niceness_prefixes_the_listener_with_nice(value: str, prefix: str) -> None:
    result = _prefix(value)
    assert (result.returncode, result.stdout) == (0, prefix)


@pytest.mark.parametrize("value", ["20", "-1", "ten", "1.5", "100"])
def test_anything_else_stops_the_start_with_the_variable_named(value: str) -> None:
    result = _prefix(value)
    assert result.returncode == 3
    assert f"COHORTSTREAM_STACK_LISTENER_NICE (make up LISTENER_NICE=N) must be 0-19, got '{value}'" in result.stderr

"""The quiet-period rule of series completion, and its clock restart after a takeover."""

from __future__ import annotations

from typing import Any

from streams.agents.series_completion import is_quiet


def _state(activity_ms: int, *, open_: bool = True) -> dict[str, Any]:
    return {"activity_ms": activity_ms, "open": open_, "revision": 0}


def test_an_open_series_is_quiet_after_the_period_without_new_instances() -> None:
    assert not is_quiet(_state(10_000), now_ms=11_999, quiet_period_s=2.0)
    assert is_quiet(_state(10_000), now_ms=12_000, quiet_period_s=2.0)
    assert not is_quiet(_state(10_000, open_=False), now_ms=99_000, quiet_period_s=2.0)
    assert not is_quiet(None, now_ms=99_000, quiet_period_s=2.0)


def test_the_clock_restarts_when_a_process_takes_the_partition_over() -> None:
    """After a worker died, its series come back from the changelog with their old
    activity time while the rest of their instances still wait behind the committed
    offset: they get a full quiet period from the takeover, not none."""
    restored = _state(10_000)
    assert not is_quiet(restored, now_ms=60_000, quiet_period_s=2.0, resumed_ms=59_000)
    assert is_quiet(restored, now_ms=61_000, quiet_period_s=2.0, resumed_ms=59_000)

"""Wait for an effect with a bounded timeout instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["eventually", "until"]


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 60.0, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something other than None/False; fail after ``timeout_s``.

    The short pause between probes is the poll interval (doubling up to 1 s), not a
    guess at how long the effect takes: the test ends as soon as the effect is seen.
    """
    deadline = time.monotonic() + timeout_s
    interval = 0.05
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval)
        interval = min(interval * 2, 1.0)


def until(condition: Callable[[], object], *, timeout_s: float = 10.0, what: str = "condition") -> None:
    """:func:`eventually` for a synchronous ``condition`` (tests without an event loop):
    return as soon as it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    interval = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, 0.2)

"""Retry a sink operation through lost connectivity, as backpressure, and nothing else.

An agent awaiting :func:`retry_transient` holds its message: the offset is not committed
and the partition waits, which is what we want while MongoDB or Orthanc is unreachable.
After ``pause_after`` quick attempts the sink is declared paused (one ERROR log line,
the ``cohortstream_sink_paused`` gauge) and keeps retrying with a capped delay until the
service is back, then logs that it resumed.

Any other error is *not* backpressure: retrying it forever is how one deterministic
error (a duplicate key, a reply that does not parse) once stalled a whole worker. Such an
error is tried ``other_attempts`` times in all (a race may clear on a second try), then
propagates, so the caller dead-letters the events and the partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cohortstream.metrics import SINK_ERRORS, SINK_LATENCY, SINK_PAUSED, SINK_RETRIES, operation_label

__all__ = ["retry_transient", "sinks_paused"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_paused = 0


def sinks_paused() -> int:
    """How many sink operations of this process wait for their service right now.

    The stream app asks this when a rebalance or a shutdown waits for in-flight messages
    (streams/app.py): a message held by a paused sink will not finish soon, and must not
    hold the group."""
    return _paused


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: tuple[type[BaseException], ...],
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    pause_after: int = 5,
    max_attempts: int | None = None,
    other_attempts: int = 1,
) -> T:
    """Run ``operation`` until it succeeds, waiting longer after each transient failure.

    ``transient`` errors (lost connectivity) are retried without end when
    ``max_attempts`` is None (backpressure); a number re-raises the last one after that
    many attempts. Any other ``Exception`` is raised on its ``other_attempts``-th
    occurrence (1: at once).
    """
    global _paused
    delay = first_delay_s
    attempt = 0
    other_failures = 0
    paused = False
    label = operation_label(what)
    started = time.monotonic()
    try:
        while True:
            attempt += 1
            try:
                result = await operation()
            except transient as exc:
                SINK_RETRIES.labels(label).inc()
                if max_attempts is not None and attempt >= max_attempts:
                    raise
                fields = {"operation": what, "attempt": attempt, "retry_in_s": delay, "error": repr(exc)}
                if attempt == pause_after:
                    paused = True
                    _paused += 1
                    SINK_PAUSED.labels(label).inc()
                    log.error("sink paused: service unavailable, retrying until it is back", extra=fields)
                else:
                    log.warning("transient failure, will retry", extra=fields)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay_s)
                continue
            except Exception as exc:
                other_failures += 1
                SINK_ERRORS.labels(label).inc()
                if other_failures >= other_attempts:
                    raise
                log.warning(
                    "sink error (not connectivity), trying again before dead-lettering",
                    extra={"operation": what, "attempt": other_failures, "of": other_attempts, "error": repr(exc)},
                )
                await asyncio.sleep(min(first_delay_s * other_failures, max_delay_s))
                continue
            if paused:
                log.warning("sink resumed", extra={"operation": what, "attempts": attempt})
            SINK_LATENCY.labels(label).observe(time.monotonic() - started)
            return result
    finally:
        if paused:
            _paused -= 1
            SINK_PAUSED.labels(label).dec()

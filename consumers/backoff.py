"""Retry a sink operation through transient outages, as backpressure.

An agent awaiting :func:`retry_transient` holds its message: the offset is not committed
and the partition waits, which is what we want while MongoDB or Orthanc is down. After
``pause_after`` quick attempts the sink is declared paused (one ERROR log line) and keeps
retrying with a capped delay until the service is back, then logs that it resumed.
Errors that retrying cannot fix (bad data) propagate at once so the caller can
dead-letter the message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cohortstream.metrics import SINK_LATENCY, SINK_RETRIES, operation_label

__all__ = ["retry_transient"]

T = TypeVar("T")
log = logging.getLogger(__name__)


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: tuple[type[BaseException], ...],
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    pause_after: int = 5,
    max_attempts: int | None = None,
) -> T:
    """Run ``operation`` until it succeeds, waiting longer after each transient failure.

    ``max_attempts=None`` retries without end (backpressure); a number re-raises the
    last transient error after that many attempts.
    """
    delay = first_delay_s
    attempt = 0
    label = operation_label(what)
    started = time.monotonic()
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
                log.error("sink paused: service unavailable, retrying until it is back", extra=fields)
            else:
                log.warning("transient failure, will retry", extra=fields)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        if attempt >= pause_after:
            log.warning("sink resumed", extra={"operation": what, "attempts": attempt})
        SINK_LATENCY.labels(label).observe(time.monotonic() - started)
        return result

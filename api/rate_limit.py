"""Failed API-key attempts, counted per source address, so guessing keys gets nowhere.

Every presented key that is not valid (malformed, unknown, revoked, wrong secret) counts
against the caller's address in a sliding window of :data:`WINDOW_S` seconds; once an
address reaches ``api_auth_failures_per_minute`` failures, its further attempts with an
unverified key answer **429** with ``Retry-After`` *before* any lookup or hash is done, so
a flood costs the server almost nothing. A key verified before (in the authenticator's
cache) keeps working from that address: one client guessing does not lock out the
others behind the same NAT. Logs carry the address, never a presented key.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["WINDOW_S", "FailureLimiter"]

WINDOW_S = 60.0
_MAX_SOURCES = 10_000


class FailureLimiter:
    """A sliding window of failure times per source address (bounded memory)."""

    def __init__(self, per_window: int, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self._limit = per_window
        self._window = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._announced: set[str] = set()

    def _recent(self, source: str, now: float) -> deque[float]:
        failures = self._failures.get(source)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures:
            del self._failures[source]
            self._announced.discard(source)
        return failures

    def admit(self, source: str) -> int | None:
        """Let one attempt of ``source`` through (None) and count it as failed until
        :meth:`forgive` says it succeeded, or refuse it: the seconds until ``source`` may try
        again. Counting before the check runs keeps concurrent attempts within the limit."""
        now = self._clock()
        failures = self._recent(source, now)
        if len(failures) >= self._limit:
            return max(1, math.ceil(failures[0] + self._window - now))
        self._record(source, now)
        return None

    def forgive(self, source: str) -> None:
        """The attempt :meth:`admit` let through succeeded: it no longer counts."""
        failures = self._failures.get(source)
        if failures:
            failures.pop()
            if not failures:
                del self._failures[source]

    def _record(self, source: str, now: float) -> None:
        if source not in self._failures and len(self._failures) >= _MAX_SOURCES:
            for stale in [s for s in list(self._failures) if not self._recent(s, now)][:1] or list(self._failures)[:1]:
                self._failures.pop(stale, None)
                self._announced.discard(stale)
        self._failures.setdefault(source, deque()).append(now)

    def first_refusal(self, source: str) -> bool:
        """True once per blocked period of ``source`` (log the block once, not every attempt)."""
        if source in self._announced:
            return False
        self._announced.add(source)
        return True

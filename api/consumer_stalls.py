"""Which consumer groups have stopped moving: lag above 0 and a committed offset that has
not changed for ``consumer_stall_after_s``.

Lag alone does not tell a busy consumer from a stuck one (a large EHR load has lag for
minutes while it moves fine). A stuck one — a sink that waits, an agent wedged on a batch
— keeps its committed offset still while messages wait. The tracker remembers, per
(group, topic), when the committed offset last moved (or the lag was 0), across the
offset reads that ``/readyz`` and ``/metrics`` make; one API process keeps one tracker.
The first read of a pair starts its clock, so a stall shows at the latest
``consumer_stall_after_s`` after the API started watching.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from api.kafka_offsets import OffsetsReport

__all__ = ["StallTracker", "StalledConsumer"]


@dataclass(frozen=True)
class StalledConsumer:
    """A consumer group that has not moved on a topic with waiting messages."""

    group: str
    topic: str
    agents: tuple[str, ...]
    lag: int
    stalled_for_s: float

    def as_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "agents": list(self.agents),
            "topic": self.topic,
            "lag": self.lag,
            "stalled_for_s": round(self.stalled_for_s, 1),
        }


@dataclass
class _Progress:
    committed: int
    since: float


class StallTracker:
    """Remembers when each (group, topic) last moved; see the module docstring."""

    def __init__(self, stall_after_s: float, agents_by_group: Mapping[str, tuple[str, ...]]) -> None:
        self._stall_after_s = stall_after_s
        self._agents = dict(agents_by_group)
        self._progress: dict[tuple[str, str], _Progress] = {}

    def observe(self, report: OffsetsReport, now: float | None = None) -> list[StalledConsumer]:
        """Record one offset read; the pairs stalled as of ``now`` (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        stalled: list[StalledConsumer] = []
        for group in report.groups:
            for topic, committed in group.committed.items():
                lag = group.lag.get(topic, 0)
                key = (group.group, topic)
                progress = self._progress.get(key)
                if progress is None or progress.committed != committed or lag == 0:
                    self._progress[key] = _Progress(committed, now)
                    continue
                waited = now - progress.since
                if waited >= self._stall_after_s:
                    stalled.append(StalledConsumer(group.group, topic, self._agents.get(group.group, ()), lag, waited))
        return sorted(stalled, key=lambda s: (s.group, s.topic))

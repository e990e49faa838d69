"""A consumer whose lag does not move is reported as stalled; a busy one is not."""

from __future__ import annotations

from api.consumer_stalls import StallTracker
from api.kafka_offsets import GroupOffsets, OffsetsReport


def _report(committed: int, lag: int) -> OffsetsReport:
    return OffsetsReport(
        end={"ehr.record": committed + lag},
        groups=[GroupOffsets("cs-ehr-views", {"ehr.record": committed}, {"ehr.record": lag})],
    )


def test_lag_with_a_still_offset_is_a_stall_after_the_configured_time() -> None:
    tracker = StallTracker(60.0, {"cs-ehr-views": ("ehr-views",)})
    assert tracker.observe(_report(100, 300), now=0.0) == []
    assert tracker.observe(_report(100, 300), now=59.0) == []
    (stalled,) = tracker.observe(_report(100, 300), now=61.0)
    assert (stalled.group, stalled.topic, stalled.agents, stalled.lag) == (
        "cs-ehr-views",
        "ehr.record",
        ("ehr-views",),
        300,
    )
    assert stalled.as_json()["stalled_for_s"] == 61.0


def test_a_consumer_that_moves_or_has_no_lag_is_not_stalled() -> None:
    tracker = StallTracker(60.0, {})
    tracker.observe(_report(100, 300), now=0.0)
    assert tracker.observe(_report(150, 400), now=100.0) == [], "the offset moved: busy, not stuck"
    assert tracker.observe(_report(150, 400), now=159.0) == []
    tracker.observe(_report(150, 0), now=200.0)
    assert tracker.observe(_report(150, 0), now=400.0) == [], "nothing waits: idle, not stuck"
    assert tracker.observe(_report(150, 5), now=459.0) == [], "the clock restarts when messages arrive"
    assert len(tracker.observe(_report(150, 5), now=461.0)) == 1

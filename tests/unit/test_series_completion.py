"""The quiet-period rule of series completion, its clock restart after a takeover, and
the exact count of a series when a crash split an instance's two table writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cohortstream.events import DicomInstanceReceived
from streams.agents.series_completion import is_owned, is_quiet, record_instance
from tests.examples import example_instance


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


def test_only_the_partitions_owner_announces_a_series() -> None:
    """A worker that counted part of a series before a rebalance moved its partition keeps
    that state in memory; it must not announce it (it did, with 4 of 12 instances, while
    the new owner was still reading the rest)."""
    first = example_instance(1)
    _, state = record_instance(None, None, first, offset=7, now_ms=1_000, partition=1)
    assert state is not None and state["partition"] == 1
    assert is_owned(state, {0, 1})
    assert not is_owned(state, {2, 3}), "the partition went to another worker"
    legacy = {k: v for k, v in state.items() if k != "partition"}
    assert is_owned(legacy, set()), "a state from before partitions were recorded behaves as before"
    assert not is_owned(None, {0, 1, 2, 3})


def _replay(
    messages: list[tuple[int, DicomInstanceReceived]],
    seen: dict[str, Any],
    activity: dict[str, Any],
) -> None:
    for offset, event in messages:
        entry, state = record_instance(
            seen.get(event.sop_instance_uid), activity.get(event.series_instance_uid), event, offset, 1_000
        )
        if entry is not None:
            seen[event.sop_instance_uid] = entry
        if state is not None:
            activity[event.series_instance_uid] = state


def test_each_instance_counts_once_and_a_resent_copy_not_at_all() -> None:
    first, second = example_instance(1), example_instance(2)
    seen: dict[str, Any] = {}
    activity: dict[str, Any] = {}
    _replay([(10, first), (11, second), (12, first)], seen, activity)
    (state,) = activity.values()
    assert state["instance_count"] == 2
    assert seen[first.sop_instance_uid] == {"series": first.series_instance_uid, "offset": 10}


def test_a_crash_between_the_two_writes_neither_loses_nor_doubles_a_count() -> None:
    """SIGKILL after the seen entry was written and before the series state was: the next
    owner reads the message again and must count it (two clean-clone runs of the
    two-worker fault test saw 11 of 12 when it did not)."""
    first, second = example_instance(1), example_instance(2)
    messages = [(10, first), (11, second)]
    seen: dict[str, Any] = {}
    activity: dict[str, Any] = {}
    _replay(messages[:1], seen, activity)
    seen[second.sop_instance_uid] = {"series": second.series_instance_uid, "offset": 11}  # only this write survived
    _replay(messages, seen, activity)  # the replay from the last committed offset
    assert next(iter(activity.values()))["instance_count"] == 2

    # The other way round: the series state counted offset 11, its seen entry was lost.
    seen_2: dict[str, Any] = {}
    activity_2: dict[str, Any] = {}
    _replay(messages, seen_2, activity_2)
    del seen_2[second.sop_instance_uid]
    _replay(messages, seen_2, activity_2)
    assert next(iter(activity_2.values()))["instance_count"] == 2
    assert seen_2[second.sop_instance_uid]["offset"] == 11


def test_a_seen_entry_from_before_offsets_were_recorded_still_means_seen() -> None:
    event = example_instance(1)
    entry, state = record_instance(event.series_instance_uid, None, event, 5, 1_000)
    assert (entry, state) == (None, None)


def test_the_activity_table_keys_its_changelog_like_the_topic_keys_its_instances(tmp_path: Path) -> None:
    """The timer writes the activity table outside stream iteration, so the producer's
    partitioner places each key: only the topic's own key bytes (the UID's UTF-8, "raw")
    land in the partition of the series' instances. A str key went out JSON-encoded with
    quotes and hashed elsewhere; the next owner of a partition then lacked its series."""
    from cohortstream.settings import Settings
    from streams.worker import build_lane_app

    app = build_lane_app(Settings(data_dir=tmp_path, topic_partitions=12), "series-completion")
    table = app.tables["dicom-series-activity-v2"]
    assert table.use_partitioner
    assert table.changelog_topic.key_serializer == "raw"
    series = example_instance(1).series_instance_uid
    raw_key = table.changelog_topic.prepare_key(series.encode("utf-8"), None)[0]
    # The publisher keys each instance by these bytes, so both hash to one partition.
    assert raw_key == series.encode("utf-8")

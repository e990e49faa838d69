"""Batched view agents: how long a batch waits, and the sinks' concurrent round trips."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from cohortstream.codec import EventCodec
from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings
from consumers.mongo_sink import together
from streams.agents import dicom_views
from streams.app import create_app
from streams.dead_letter import DeadLetterSender
from streams.topics import define_topics
from tests.examples import example_events

# --- the DICOM views agent's batch wait ------------------------------------------------


class _RecordingSink:
    """Stands in for DicomViews: records when each batch was applied."""

    applied: ClassVar[list[tuple[float, int]]] = []

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def setup(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, events: Sequence[DicomInstanceReceived]) -> None:
        type(self).applied.append((time.monotonic(), len(events)))


async def test_a_lone_dicom_event_reaches_the_views_sink_within_the_batch_wait(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The batch of up to 200 used to wait 1 s for more events before it was applied: at
    # 250 inst/s that was most of the views' lag. The wait is now a setting (0.2 s).
    monkeypatch.setattr(dicom_views, "DicomViews", _RecordingSink)
    _RecordingSink.applied = []
    settings = Settings.load(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", dicom_views_batch_wait_s=0.1)
    app = create_app(settings, app_id="unit-views-wait")
    app.conf.store = "memory://"
    typed = define_topics(app, settings)
    raw = define_topics(app, settings, raw=True)
    agent = dicom_views.register(app, raw, DeadLetterSender(typed["dead-letter"], producer="test"), settings)
    event = next(e for e in example_events() if isinstance(e, DicomInstanceReceived))
    async with agent.test_context() as running:
        put_at = time.monotonic()
        await running.put(EventCodec().encode_event(event))
        deadline = put_at + 5
        while not _RecordingSink.applied and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert _RecordingSink.applied, "the event was never applied"
    applied_at, size = _RecordingSink.applied[0]
    assert size == 1
    assert applied_at - put_at < 0.8, f"applied {applied_at - put_at:.2f} s after it arrived (the old wait was 1 s)"


def _views_agent(tmp_path, monkeypatch, wait_s: float):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(dicom_views, "DicomViews", _RecordingSink)
    _RecordingSink.applied = []
    settings = Settings.load(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", dicom_views_batch_wait_s=wait_s)
    app = create_app(settings, app_id="unit-views-backlog")
    app.conf.store = "memory://"
    typed = define_topics(app, settings)
    raw = define_topics(app, settings, raw=True)
    return dicom_views.register(app, raw, DeadLetterSender(typed["dead-letter"], producer="test"), settings)


def _copies(n: int) -> list[bytes]:
    template = next(e for e in example_events() if isinstance(e, DicomInstanceReceived))
    codec = EventCodec()
    return [
        codec.encode_event(template.model_copy(update={"sop_instance_uid": f"{template.sop_instance_uid}.{i}"}))
        for i in range(n)
    ]


async def _applied_until(count: int, seconds: float) -> list[tuple[float, int]]:
    """The batches applied once ``count`` events were applied, or when ``seconds`` ran out."""
    deadline = time.monotonic() + seconds
    while sum(size for _, size in _RecordingSink.applied) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return list(_RecordingSink.applied)


async def test_events_that_already_waited_are_applied_without_a_further_wait(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Behind a backlog the events were fetched long after Kafka had them: the batch waits
    # for those already fetched, not for the whole wait again (faust's take_events waited
    # it after every batch: 0.2 s a cycle at four associations in bench.orthanc_feed).
    agent = _views_agent(tmp_path, monkeypatch, wait_s=2.0)
    async with agent.test_context() as running:
        put_at = time.monotonic()
        for value in _copies(5):
            await running.put(value, timestamp=time.time() - 3)  # in Kafka for 3 s already
        applied = await _applied_until(5, 1.0)
    assert applied, "a backlog waited the whole 2 s batch wait"
    assert sum(size for _, size in applied) == 5
    assert applied[0][0] - put_at < 1.0


async def test_fresh_events_still_wait_to_share_a_batch(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    agent = _views_agent(tmp_path, monkeypatch, wait_s=0.5)
    async with agent.test_context() as running:
        for value in _copies(3):
            await running.put(value)  # just arrived
            await asyncio.sleep(0.05)
        applied = await _applied_until(3, 1.5)
    assert [size for _, size in applied] == [3], "fresh events were not gathered into one batch"


def test_the_dicom_views_batch_wait_is_bounded() -> None:
    assert Settings.load().dicom_views_batch_wait_s == 0.2
    with pytest.raises(ValueError, match="dicom_views_batch_wait_s"):
        Settings.load(dicom_views_batch_wait_s=0)


# --- together(): independent round trips at once --------------------------------------


async def test_together_runs_operations_at_once_and_keeps_their_order() -> None:
    running = 0
    most = 0

    async def op(value: int, delay: float) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(delay)
        running -= 1
        return value

    started = time.monotonic()
    assert await together(op(1, 0.2), op(2, 0.1), op(3, 0.0)) == [1, 2, 3]
    assert most == 3
    assert time.monotonic() - started < 0.3 + 0.5  # the slowest, not the sum (plus slack for a busy machine)


async def test_together_keeps_at_most_limit_in_flight() -> None:
    running = 0
    most = 0

    async def op(value: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return value

    assert await together(*(op(i) for i in range(10)), limit=3) == list(range(10))
    assert most == 3


async def test_together_raises_the_failure_itself_and_stops_the_others_first() -> None:
    finished: list[str] = []
    cancelled: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
            finished.append("slow")
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    async def failing() -> Any:
        await asyncio.sleep(0.01)
        raise KeyError("refused")

    with pytest.raises(KeyError, match="refused"):  # not an ExceptionGroup
        await together(slow(), failing())
    # The other operation was cancelled and has finished before together() returned:
    # nothing of a failed batch is still writing when it is retried event by event.
    assert cancelled == ["slow"]
    assert finished == []

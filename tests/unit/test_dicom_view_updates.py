"""How a batch of received instances becomes view upserts: one statement per document."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from cohortstream.events import DicomInstanceReceived
from consumers.dicom_views import view_updates
from consumers.mongo_sink import WRITE_CHUNK
from tests.examples import FIXED_TIME, example_events
from tests.polling import eventually


def _instances(count: int, *, series_count: int = 2) -> list[DicomInstanceReceived]:
    template = example_events()[0]
    assert isinstance(template, DicomInstanceReceived)
    events = []
    for n in range(count):
        series = f"{template.study_instance_uid}.{n % series_count + 1}"
        events.append(
            template.model_copy(
                update={
                    "series_instance_uid": series,
                    "sop_instance_uid": f"{series}.{n}",
                    "modality": "MR" if n % series_count == 0 else "SEG",
                    "received_at": FIXED_TIME + timedelta(seconds=n),
                    "study_date": date(2026, 11, 20) + timedelta(days=n % 3),
                }
            )
        )
    return events


def test_one_statement_per_document_not_per_instance() -> None:
    updates = view_updates(_instances(120), lambda ids: f"viewer/{ids.study}")
    assert {name: len(ops) for name, ops in updates.items()} == {
        "instances": 120,
        "series": 2,
        "studies": 1,
        "patients": 1,
    }


def test_merged_study_update_covers_every_series_modality_and_time() -> None:
    events = _instances(10)
    study = view_updates(events, lambda ids: "x")["studies"][0]._doc
    assert study["$addToSet"]["series"]["$each"] == sorted({e.series_instance_uid for e in events})
    assert study["$addToSet"]["modalities"]["$each"] == ["MR", "SEG"]
    assert study["$min"]["first_received_at"] == FIXED_TIME
    assert study["$max"]["last_received_at"] == FIXED_TIME + timedelta(seconds=9)
    patient = view_updates(events, lambda ids: "x")["patients"][0]._doc
    assert patient["$min"]["first_study_date"].date() == date(2026, 11, 20)
    assert patient["$max"]["last_study_date"].date() == date(2026, 11, 22)


def test_a_duplicate_instance_in_one_batch_is_written_once() -> None:
    events = _instances(3)
    updates = view_updates([*events, events[0]], lambda ids: "x")
    assert len(updates["instances"]) == 3


def test_write_chunk_is_a_sensible_command_size() -> None:
    assert 100 <= WRITE_CHUNK <= 1000


def test_the_first_copy_of_an_instance_wins_and_every_copy_is_remembered() -> None:
    first = _instances(1)[0]
    resent = first.model_copy(update={"sha256": "b" * 64, "transfer_syntax_uid": "1.2.840.10008.1.2.5"})
    (update,) = view_updates([first, resent, first], lambda ids: "x")["instances"]
    assert update._doc["$setOnInsert"]["sha256"] == "a" * 64
    assert update._doc["$setOnInsert"]["transfer_syntax_uid"] == first.transfer_syntax_uid
    assert update._doc["$addToSet"]["received_sha256"] == {"$each": ["a" * 64, "b" * 64]}


async def test_only_lost_connectivity_is_backpressure_other_errors_are_bounded() -> None:
    """A deterministic error (duplicate key, unreadable reply) is tried a few times and then
    raised for the agent to dead-letter; it is never retried forever (issue 11's stall)."""
    from pymongo.errors import AutoReconnect, DuplicateKeyError

    from cohortstream.backoff import retry_transient
    from consumers.mongo_sink import TRANSIENT_MONGO_ERRORS

    calls: list[int] = []

    async def failing(exc: Exception) -> None:
        calls.append(1)
        raise exc

    for error in (DuplicateKeyError("E11000"), KeyError("nModified")):
        calls.clear()
        with pytest.raises(type(error)):
            await retry_transient(
                lambda e=error: failing(e),
                what="w",
                transient=TRANSIENT_MONGO_ERRORS,
                first_delay_s=0.001,
                other_attempts=3,
            )
        assert len(calls) == 3

    outages = [AutoReconnect("down")] * 7

    async def recovers() -> str:
        if outages:
            raise outages.pop()
        return "applied"

    assert (
        await retry_transient(
            recovers,
            what="w",
            transient=TRANSIENT_MONGO_ERRORS,
            first_delay_s=0.001,
            max_delay_s=0.002,
            pause_after=2,
            other_attempts=1,
        )
        == "applied"
    )


async def test_a_race_that_clears_on_the_second_try_is_applied() -> None:
    from pymongo.errors import DuplicateKeyError

    from cohortstream.backoff import retry_transient

    errors = [DuplicateKeyError("E11000")]

    async def racing() -> str:
        if errors:
            raise errors.pop()
        return "applied"

    assert (
        await retry_transient(racing, what="w", transient=(ConnectionError,), first_delay_s=0.001, other_attempts=3)
        == "applied"
    )


async def test_sink_operations_are_timed_and_retries_counted_without_identifiers() -> None:
    from cohortstream.backoff import retry_transient
    from cohortstream.metrics import SINK_LATENCY, SINK_RETRIES, operation_label

    label = operation_label("store SEG of series 1.2.826.0.1.3680043.8.498.7 in Orthanc")
    assert label == "store SEG of series * in Orthanc"
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return "ok"

    before = SINK_RETRIES.labels(label)._value.get()
    count_before = SINK_LATENCY.labels(label)._sum.get()
    assert (
        await retry_transient(
            flaky, what="store SEG of series 1.2.3.4.5.6.7 in Orthanc", transient=(ConnectionError,), first_delay_s=0.01
        )
        == "ok"
    )
    assert SINK_RETRIES.labels(label)._value.get() == before + 1
    assert SINK_LATENCY.labels(label)._sum.get() > count_before


async def test_a_paused_sink_is_counted_while_it_waits_and_not_after() -> None:
    """The stream app asks ``sinks_paused()`` to decide whether a rebalance or a stop may
    release in-flight messages (streams/app.py)."""
    import asyncio

    from pymongo.errors import AutoReconnect

    from cohortstream.backoff import retry_transient, sinks_paused

    gate = asyncio.Event()

    async def down_until_gate() -> str:
        if not gate.is_set():
            raise AutoReconnect("down")
        return "applied"

    task = asyncio.create_task(
        retry_transient(
            down_until_gate, what="w", transient=(AutoReconnect,), first_delay_s=0.001, max_delay_s=0.002, pause_after=2
        )
    )

    async def paused() -> bool:
        return sinks_paused() == 1

    await eventually(paused, timeout_s=5, what="the sink counted as paused")
    gate.set()
    assert await task == "applied"
    assert sinks_paused() == 0

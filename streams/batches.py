"""Batched view agents: decode a batch, apply it, and isolate what cannot be applied.

A view agent takes up to ``size`` messages (or, when fewer are there, what arrived
before the oldest of them waited ``within_s``: :func:`take_batches`), hands the decoded
events to its sink in one call, and the offsets are acknowledged only after that call
returns, so no unapplied work is committed. Transient sink failures
never surface here (the sinks retry them, which is the backpressure). Anything else is a
bug or a poison event: the batch is retried one event at a time and the events that
still fail go to the dead-letter topic, so one bad event never blocks the partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

import faust
from faust.types import EventT, Message
from mode.utils.futures import notify

from cohortstream.codec import EventCodec
from cohortstream.events import Event, FailureStage
from streams.dead_letter import DeadLetterSender, decode_or_dead_letter

__all__ = ["ViewSink", "apply_or_dead_letter", "register_view_agent", "run_batched_views", "take_batches"]

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
E_contra = TypeVar("E_contra", bound=Event, contravariant=True)


async def apply_or_dead_letter(
    apply: Callable[[Sequence[E]], Awaitable[Any]],
    batch: Sequence[tuple[E, Message]],
    dead_letters: DeadLetterSender,
    what: str,
) -> None:
    """``apply`` the batch; on an unexpected failure, apply event by event and
    dead-letter the events that fail alone."""
    if not batch:
        return
    try:
        await apply([event for event, _ in batch])
        return
    except Exception:
        log.exception("unexpected failure applying a batch; retrying its events one by one", extra={"view": what})
    for event, message in batch:
        try:
            await apply([event])
        except Exception as exc:
            log.exception("unexpected failure applying an event", extra={"view": what, "event_id": str(event.event_id)})
            await dead_letters.send(message, FailureStage.OTHER, exc)


async def run_batched_views(
    stream: faust.StreamT[Any],
    expected: type[E],
    apply: Callable[[Sequence[E]], Awaitable[Any]],
    dead_letters: DeadLetterSender,
    *,
    what: str,
    size: int,
    within_s: float,
) -> None:
    """The body of a batched view agent (see the module docstring)."""
    codec = EventCodec()
    async for items in take_batches(cast(faust.Stream[Any], stream), size, within_s):
        batch: list[tuple[E, Message]] = []
        for item in items:
            event = await decode_or_dead_letter(item, codec, expected, dead_letters)
            if event is not None:
                batch.append((event, item.message))
        await apply_or_dead_letter(apply, batch, dead_letters, what)


_TICK_S = 0.01
"""How often a waiting batch checks whether the events behind it stopped coming."""


async def take_batches(stream: faust.Stream[Any], size: int, within_s: float) -> AsyncIterator[list[EventT[Any]]]:
    """Batches of up to ``size`` events of ``stream``; an event waits at most about ``within_s``.

    faust's ``Stream.take_events`` (which this follows line for line, acknowledgements
    included: a batch's events are acknowledged only when the caller asks for the next
    batch, i.e. after it applied this one) waits ``within`` after every batch unless the
    buffer fills. Behind a backlog smaller than ``size`` that wait is pure delay: in
    ``bench.orthanc_feed`` at four associations the views lane applied every batch
    ~0.2 s after the previous one although its events were already 0.5-1.4 s old. Here
    the wait is counted from the oldest event of the buffer (its Kafka timestamp): once
    that one has waited ``within_s`` the batch goes as soon as the events already fetched
    are in (no new one for ``_TICK_S``), and never later than ``within_s`` after the first
    one was buffered (faust's bound).
    """
    loop = asyncio.get_running_loop()
    buffer: list[Any] = []
    events: list[EventT[Any]] = []
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_started = asyncio.Event()  # the buffer holds an event
    first_buffered: float | None = None  # loop time the buffer's first event was added
    oldest_s: float | None = None  # Kafka timestamp (faust: seconds) of the buffer's oldest event
    stream_enable_acks: bool = stream.enable_acks
    buffer_consuming: asyncio.Future[None] | None = None
    channel_it = aiter(stream.channel)

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming, first_buffered, oldest_s
        try:
            if buffer_consuming is not None:  # set while the caller applies a batch
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            events.append(event)
            timestamp = getattr(event.message, "timestamp", None)
            if first_buffered is None:
                first_buffered = loop.time()
                buffer_started.set()
            if isinstance(timestamp, int | float) and timestamp > 0:
                oldest_s = timestamp if oldest_s is None else min(oldest_s, timestamp)
            if len(buffer) >= size:
                buffer_full.set()
                buffer_consumed.clear()  # no more than size values in a batch
                await stream.wait(buffer_consumed)  # type: ignore[arg-type]
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            log.exception("error adding to a view batch", extra={"error": repr(exc)})
            await stream.crash(exc)
        return value

    def due() -> float:
        """Seconds until the batch must go regardless (faust's bound), 0 when it must now."""
        if first_buffered is None:
            return within_s
        return max(0.0, first_buffered + within_s - loop.time())

    def old_enough() -> bool:
        return oldest_s is not None and time.time() - oldest_s >= within_s

    stream.enable_acks = False  # acknowledged here, after the caller applied the batch
    stream.add_processor(add_to_buffer)
    stream._enable_passive(cast(Any, channel_it))
    try:
        while not stream.should_stop:
            if not buffer:
                await stream.wait_for_stopped(buffer_started, timeout=within_s)  # type: ignore[arg-type]
            if buffer:
                # Wait in ticks: go when full, when faust's bound runs out, or when the
                # oldest event waited long enough and no further event came in a tick.
                while not buffer_full.is_set() and not stream.should_stop and due() > 0:
                    seen = len(buffer)
                    await stream.wait_for_stopped(buffer_full, timeout=min(_TICK_S, due()))  # type: ignore[arg-type]
                    if old_enough() and len(buffer) == seen:
                        break
            if buffer and (buffer_full.is_set() or due() == 0 or old_enough()):
                buffer_consuming = loop.create_future()
                try:
                    yield list(events)
                finally:
                    buffer.clear()
                    for event in events:
                        await stream.ack(event)
                    events.clear()
                    first_buffered = oldest_s = None
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_started.clear()
                    buffer_consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)


class ViewSink(Protocol[E_contra]):
    """What a batched view agent needs of its sink."""

    async def setup(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, events: Sequence[E_contra]) -> Any: ...


def register_view_agent(
    app: faust.App,
    topic: faust.TopicT,
    *,
    name: str,
    expected: type[E],
    sink: ViewSink[E],
    dead_letters: DeadLetterSender,
    size: int,
    within_s: float = 1.0,
) -> Any:
    """Attach an agent that feeds ``topic`` to ``sink`` in batches; returns the agent."""

    @app.agent(topic, name=name)
    async def build_views(stream: faust.StreamT[bytes]) -> None:
        await sink.setup()
        try:
            await run_batched_views(stream, expected, sink.apply, dead_letters, what=name, size=size, within_s=within_s)
        finally:
            await sink.close()

    return build_views

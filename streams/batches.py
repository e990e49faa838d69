"""Batched view agents: decode a batch, apply it, and isolate what cannot be applied.

A view agent takes up to ``size`` messages (or what arrived within ``within_s``), hands
the decoded events to its sink in one call, and faust acknowledges the offsets only
after that call returns, so no unapplied work is committed. Transient sink failures
never surface here (the sinks retry them, which is the backpressure). Anything else is a
bug or a poison event: the batch is retried one event at a time and the events that
still fail go to the dead-letter topic, so one bad event never blocks the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

import faust
from faust.types import Message

from cohortstream.codec import EventCodec
from cohortstream.events import Event, FailureStage
from streams.dead_letter import DeadLetterSender, decode_or_dead_letter

__all__ = ["ViewSink", "apply_or_dead_letter", "register_view_agent", "run_batched_views"]

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
    # faust's StreamT protocol leaves out take_events, which every faust Stream has.
    async for items in cast(faust.Stream[Any], stream).take_events(size, within=within_s):
        batch: list[tuple[E, Message]] = []
        for item in items:
            event = await decode_or_dead_letter(item, codec, expected, dead_letters)
            if event is not None:
                batch.append((event, item.message))
        await apply_or_dead_letter(apply, batch, dead_letters, what)


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

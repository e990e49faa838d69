"""Turn undecodable or invalid messages into dead letters without blocking the partition.

Sink agents read their topic with raw values and decode here, instead of letting faust's
codec decode: faust acknowledges a message that fails to decode *before* any handler
runs, so a crash while dead-lettering could lose it. Here the message is acknowledged
only when the agent moves past it, i.e. after the dead letter was acknowledged by Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import faust
from faust.types import EventT, Message, TopicT

from cohortstream.codec import EventCodec
from cohortstream.errors import EventDecodeError
from cohortstream.events import DeadLetter, Event, FailureStage

__all__ = ["DeadLetterSender", "decode_or_dead_letter", "decoded_events"]

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)


class DeadLetterSender:
    """Publish dead letters for one agent and wait until Kafka has them."""

    def __init__(self, topic: TopicT, producer: str) -> None:
        self._topic = topic
        self._producer = producer

    async def send(self, message: Message, stage: FailureStage, error: BaseException, attempts: int = 1) -> None:
        """Dead-letter ``message`` (kept whole) with the reason; returns after the broker ack."""
        letter = DeadLetter(
            producer=self._producer,
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            key=message.key,
            value=message.value,
            stage=stage,
            error_type=type(error).__name__,
            reason=str(error) or repr(error),
            attempts=attempts,
        )
        log.warning(
            "message dead-lettered",
            extra={
                "agent": self._producer,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "stage": stage.value,
                "error_type": letter.error_type,
                "reason": letter.reason,
            },
        )
        pending = await self._topic.send(key=message.key, value=letter)
        await pending


async def decode_or_dead_letter(
    item: EventT[Any], codec: EventCodec, expected: type[E], dead_letters: DeadLetterSender
) -> E | None:
    """The typed event of a raw faust event, or None after dead-lettering it.

    Messages that do not decode, or decode to another event type than ``expected``, go
    to the dead-letter topic (acknowledged by Kafka before this returns).
    """
    message = item.message
    value = item.value
    try:
        if not isinstance(value, bytes | bytearray):
            raise EventDecodeError(f"message value is {type(value).__name__}, expected bytes")
        event = codec.decode_event(bytes(value))
    except EventDecodeError as exc:
        await dead_letters.send(message, FailureStage.DECODE, exc)
        return None
    if not isinstance(event, expected):
        error = EventDecodeError(f"expected {expected.__name__} on {message.topic}, got {type(event).__name__}")
        await dead_letters.send(message, FailureStage.VALIDATE, error)
        return None
    return event


async def decoded_events(
    stream: faust.StreamT[Any], codec: EventCodec, expected: type[E], dead_letters: DeadLetterSender
) -> AsyncIterator[tuple[E, Message]]:
    """Yield ``(event, message)`` for each valid message of a raw-valued stream."""
    async for item in stream.events():
        event = await decode_or_dead_letter(item, codec, expected, dead_letters)
        if event is not None:
            yield event, item.message

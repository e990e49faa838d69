"""Read a topic the way any Kafka client would, for assertions: a fresh consumer group
from the earliest offset, a bounded wait for the expected count, then a short drain
that shows no extra (duplicate) message follows."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from cohortstream.codec import EventCodec
from cohortstream.events import Event
from cohortstream.kafka_security import aiokafka_security
from cohortstream.settings import Settings

__all__ = ["Read", "read_topic"]


@dataclass(frozen=True)
class Read:
    """One message as read back: its key (text) and decoded event."""

    key: str | None
    event: Event


async def read_topic(
    settings: Settings, name: str, expected: int, *, timeout_s: float = 60, drain_s: float = 0.5
) -> list[Read]:
    """Every message on logical topic ``name`` once ``expected`` have arrived.

    Raises ``TimeoutError`` if fewer arrive within ``timeout_s``. The drain (``drain_s``,
    0 to skip) is a bounded poll for anything beyond ``expected``, so callers can assert
    that nothing more was published.
    """
    consumer = AIOKafkaConsumer(
        settings.topic(name),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"probe-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        **aiokafka_security(settings),
    )
    await consumer.start()
    codec = EventCodec()
    found: list[Read] = []

    def take(batches: dict) -> None:  # type: ignore[type-arg]
        for records in batches.values():
            for record in records:
                key = record.key.decode() if record.key is not None else None
                found.append(Read(key, codec.decode_event(record.value)))

    try:

        async def collect() -> None:
            while len(found) < expected:
                take(await consumer.getmany(timeout_ms=500, max_records=5000))

        await asyncio.wait_for(collect(), timeout=timeout_s)
        if drain_s > 0:
            take(await consumer.getmany(timeout_ms=int(drain_s * 1000)))
    finally:
        await consumer.stop()
    return found

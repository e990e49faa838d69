"""Publish typed events to Kafka and return only once the broker has them durably.

Design decision 3 (success only after durability) rests here: the producer uses
``acks=all`` and idempotence, and :meth:`EventPublisher.publish` awaits the broker's
acknowledgement, so an edge (C-STORE listener, webhook) may answer success as soon as
``publish`` returns and must answer failure if it raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from cohortstream.codec import EventCodec
from cohortstream.errors import CohortStreamError
from cohortstream.events import Event
from cohortstream.kafka_security import aiokafka_security
from cohortstream.settings import Settings
from cohortstream.topics import topic_for_event

__all__ = ["EventPublisher", "PublishError"]

log = logging.getLogger(__name__)


class PublishError(CohortStreamError):
    """The broker did not acknowledge an event; the caller must report failure upstream."""


class EventPublisher:
    """An idempotent ``acks=all`` Kafka producer of single-object-encoded events."""

    def __init__(
        self,
        settings: Settings,
        codec: EventCodec | None = None,
        *,
        max_request_size: int | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        self._settings = settings
        self._codec = codec or EventCodec()
        self._max_request_size = max_request_size
        self._max_batch_size = max_batch_size
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect to the broker (kept out of ``__init__`` so construction never does I/O)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=self._settings.kafka_client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self._settings.kafka_request_timeout_s * 1000),
            **({"max_request_size": self._max_request_size} if self._max_request_size else {}),
            **({"max_batch_size": self._max_batch_size} if self._max_batch_size else {}),
            **aiokafka_security(self._settings),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise PublishError(f"cannot connect to Kafka at {self._settings.kafka_bootstrap}: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        """Flush pending messages and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def publish(self, event: Event, key: str, topic: str | None = None) -> RecordMetadata:
        """Send ``event`` keyed by ``key`` and wait until the broker acknowledged it.

        ``topic`` defaults to the catalogue's topic for the event type.
        """
        if self._producer is None:
            raise PublishError("publisher is not started")
        topic = topic or topic_for_event(type(event)).full_name(self._settings)
        value = self._codec.encode_event(event)
        try:
            metadata = await self._producer.send_and_wait(topic, value=value, key=key.encode("utf-8"))
        except KafkaError as exc:
            raise PublishError(f"Kafka did not acknowledge {type(event).__name__} on {topic}: {exc}") from exc
        log.debug(
            "event published",
            extra={
                "event_type": type(event).__name__,
                "topic": topic,
                "partition": metadata.partition,
                "offset": metadata.offset,
            },
        )
        return metadata

    async def publish_many(self, items: Sequence[tuple[Event, str]]) -> list[RecordMetadata]:
        """Send every ``(event, key)`` to its catalogue topic and wait for all acknowledgements.

        Bulk loaders use this instead of awaiting :meth:`publish` per event: every send is
        queued first, so the producer fills whole batches and keeps several requests in
        flight (the idempotent producer keeps per-partition order), then all acks are
        awaited. The same guarantee holds: when this returns, every event is durable; if
        it raises, some may be and some not (replaying is safe when sinks are idempotent).
        """
        records = [
            (topic_for_event(type(event)).full_name(self._settings), key, self._codec.encode_event(event))
            for event, key in items
        ]
        results = await self._send_all(records, f"{len(items)} events")
        log.debug("events published", extra={"count": len(items)})
        return results

    async def publish_records(self, topic: str, items: Sequence[tuple[str, bytes | None]]) -> None:
        """Send already encoded ``(key, value)`` records to ``topic`` (a full name) and wait
        for every acknowledgement, as :meth:`publish_many` does. For state topics whose
        values are not events (the features lane's snapshots); a None value is a tombstone."""
        await self._send_all([(topic, key, value) for key, value in items], f"{len(items)} records on {topic}")

    async def _send_all(self, records: Sequence[tuple[str, str, bytes | None]], what: str) -> list[RecordMetadata]:
        """Queue every ``(topic, key, value)`` first, then await all acknowledgements."""
        if self._producer is None:
            raise PublishError("publisher is not started")
        futures = []
        try:
            for topic, key, value in records:
                futures.append(await self._producer.send(topic, value=value, key=key.encode("utf-8")))
            results = await asyncio.gather(*futures, return_exceptions=True)
        except KafkaError as exc:
            raise PublishError(f"Kafka did not accept {what}: {exc}") from exc
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise PublishError(f"Kafka did not acknowledge {len(failures)} of {what}: {failures[0]}") from failures[0]
        return [r for r in results if isinstance(r, RecordMetadata)]

"""Kafka and faust for real: an Avro event produced with aiokafka reaches a faust agent
as a typed model, and the worker's dead-letter agent writes through to the MongoDB-wire server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import faust

from cohortstream.admin import ensure_topics
from cohortstream.events import DeadLetter, DicomInstanceReceived, Event
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.topics import COMPACTED_TOPICS, TOPICS
from consumers.dead_letter_archive import COLLECTION
from streams.app import create_app
from streams.topics import define_topics
from streams.worker import build_worker_app
from tests.examples import example_events
from tests.polling import eventually


async def test_event_from_aiokafka_reaches_a_faust_agent_typed(stack_settings: Settings) -> None:
    created = await ensure_topics(stack_settings)
    assert len(created) == len(TOPICS) + len(COMPACTED_TOPICS)  # the events' and the state topics
    assert await ensure_topics(stack_settings) == []  # idempotent

    app = create_app(stack_settings)
    topics = define_topics(app, stack_settings)
    received: asyncio.Queue[Event] = asyncio.Queue()

    @app.agent(topics["dicom.instance-received"])
    async def collect(stream: faust.StreamT[DicomInstanceReceived]) -> None:
        async for event in stream:
            await received.put(event)

    sent = example_events()[0]
    await app.start()
    try:
        async with EventPublisher(stack_settings) as publisher:
            metadata = await publisher.publish(sent, key=sent.series_instance_uid)
        assert metadata.topic == stack_settings.topic("dicom.instance-received")
        got = await asyncio.wait_for(received.get(), timeout=90)
    finally:
        await app.stop()
    assert isinstance(got, DicomInstanceReceived)
    assert got == sent


async def test_a_faust_app_fetches_as_the_settings_say(stack_settings: Settings) -> None:
    """faust passes neither fetch setting to aiokafka (streams/kafka_transport.py): the
    fetcher aiokafka built when the app started must carry the settings' values."""
    await ensure_topics(stack_settings)
    settings = stack_settings.model_copy(update={"consumer_fetch_min_bytes": 12345, "consumer_fetch_max_wait_s": 0.25})
    app = create_app(settings)
    topics = define_topics(app, settings)

    @app.agent(topics["dicom.instance-received"])
    async def drain(stream: faust.StreamT[DicomInstanceReceived]) -> None:
        async for _ in stream:
            pass

    await app.start()
    try:
        consumer: Any = app.consumer
        fetcher = consumer._thread._ensure_consumer()._fetcher  # the running aiokafka consumer's
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (12345, 250)
    finally:
        await app.stop()


async def test_worker_archives_dead_letters_in_mongodb_idempotently(stack_settings: Settings) -> None:
    await ensure_topics(stack_settings)
    letter = next(e for e in example_events() if isinstance(e, DeadLetter))
    marker = letter.model_copy(update={"event_id": uuid.uuid4(), "reason": "marker"})
    client = mongo_client(stack_settings)
    collection = mongo_database(client, stack_settings)[COLLECTION]
    app = build_worker_app(stack_settings)
    await app.start()
    try:
        async with EventPublisher(stack_settings) as publisher:
            first = await publisher.publish(letter, key="1.2.3")
            await publisher.publish(letter, key="1.2.3")  # at-least-once: the same dead letter again
            await publisher.publish(marker, key="1.2.3")  # one partition: seen after both copies

        async def marker_archived() -> dict[str, Any] | None:
            return await collection.find_one({"_id": str(marker.event_id)})

        await eventually(marker_archived, timeout_s=90, what="dead letters archived")
        docs = await collection.find({"_id": str(letter.event_id)}).to_list(None)
    finally:
        await app.stop()
        await client.drop_database(stack_settings.mongo_database)
        await client.close()
    assert len(docs) == 1
    doc = docs[0]
    assert doc["reason"] == letter.reason
    assert doc["stage"] == "DECODE"
    assert doc["source"] == {"topic": letter.source_topic, "partition": 2, "offset": 41, "location": None}
    assert doc["value"] == letter.value
    assert doc["archived_from"] == {
        "topic": stack_settings.topic("dead-letter"),
        "partition": 0,
        "offset": first.offset,
    }

"""The publisher against the real broker of the test stack: ``publish`` returns the
broker's acknowledgement (a RecordMetadata with the offset the broker gave the record),
the record is at that offset when a consumer reads it, and the broker assigned the
producer an idempotent producer id. The stand-in version that observes "not before the
ack" is tests/unit/test_publisher_durability.py."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import RecordMetadata

from cohortstream.admin import ensure_topics
from cohortstream.codec import EventCodec
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from tests.examples import example_instance


async def _read_at(settings: Settings, metadata: RecordMetadata) -> tuple[bytes | None, bytes | None]:
    """The key and value of the one record at ``metadata``'s partition and offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partition = TopicPartition(metadata.topic, metadata.partition)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        record = await asyncio.wait_for(consumer.getone(partition), 30)
        assert record.offset == metadata.offset
        return record.key, record.value
    finally:
        await consumer.stop()


async def test_publish_returns_the_brokers_ack_and_the_record_is_there(stack_settings: Settings) -> None:
    settings = stack_settings
    await ensure_topics(settings)
    codec = EventCodec()
    events = [example_instance(n) for n in range(3)]
    async with EventPublisher(settings) as publisher:
        acks = [await publisher.publish(event, key=event.series_instance_uid) for event in events]
        # The broker gave this producer an id: idempotence was negotiated, not just asked for.
        txn_manager = publisher._producer._txn_manager  # type: ignore[union-attr]
        assert txn_manager is not None and txn_manager.producer_id >= 0
    topic = settings.topic("dicom.instance-received")
    for event, ack in zip(events, acks, strict=True):
        assert isinstance(ack, RecordMetadata)
        assert ack.topic == topic and ack.offset >= 0
        key, value = await _read_at(settings, ack)
        assert key == event.series_instance_uid.encode()
        assert value is not None and codec.decode_event(value) == event
    # One partition (stack_settings), so the broker's offsets follow the publish order.
    assert [ack.offset for ack in acks] == list(range(acks[0].offset, acks[0].offset + 3))

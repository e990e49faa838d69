"""Design decision 3 on the Kafka side: the publisher is an ``acks=all`` idempotent
producer, and ``publish``/``publish_many`` return only after the broker acknowledged.

The producer class is replaced by a stand-in whose acknowledgements the test releases by
hand, so "returns only after the ack" is observed, not assumed; the settings the
publisher passes are also fed to the real ``AIOKafkaProducer`` to check how aiokafka reads
them. tests/integration/test_publisher_durability.py does the same against the real broker.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError
from aiokafka.structs import RecordMetadata

import cohortstream.publisher as publisher_module
from cohortstream.publisher import EventPublisher, PublishError
from cohortstream.settings import Settings
from tests.examples import example_instance


class FakeProducer:
    """Like AIOKafkaProducer: ``send`` queues and returns a future that resolves on the
    broker's ack; here the test resolves it (``ack``/``fail``)."""

    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.pending: list[tuple[str, bytes, bytes, asyncio.Future[RecordMetadata]]] = []
        self.sent = asyncio.Event()
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[RecordMetadata]:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.pending.append((topic, value, key, future))
        self.sent.set()
        return future

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> RecordMetadata:
        return await (await self.send(topic, value, key))

    def ack(self) -> list[RecordMetadata]:
        acked = []
        for offset, (topic, _value, _key, future) in enumerate(self.pending):
            metadata = RecordMetadata(topic, 0, None, offset, 0, 0, 0)
            future.set_result(metadata)
            acked.append(metadata)
        self.pending.clear()
        return acked

    def fail(self, exc: Exception) -> None:
        for *_, future in self.pending:
            future.set_exception(exc)
        self.pending.clear()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    FakeProducer.instances = []
    monkeypatch.setattr(publisher_module, "AIOKafkaProducer", FakeProducer)
    return FakeProducer


async def _not_done_after_the_loop_ran(task: asyncio.Task[Any]) -> bool:
    # Let every other ready callback run (no wall-clock sleep): the task could finish now
    # if it did not wait for the ack.
    for _ in range(50):
        await asyncio.sleep(0)
    return not task.done()


async def test_producer_is_acks_all_and_idempotent(fake: type[FakeProducer]) -> None:
    settings = Settings(kafka_request_timeout_s=7.0)
    async with EventPublisher(settings):
        [producer] = fake.instances
    assert producer.kwargs["acks"] == "all"
    assert producer.kwargs["enable_idempotence"] is True
    assert producer.kwargs["bootstrap_servers"] == settings.kafka_bootstrap_servers
    # What aiokafka makes of those settings: acks=-1 (all in-sync replicas) and a
    # transaction manager, which is what assigns the idempotent producer id and sequences.
    real = AIOKafkaProducer(**producer.kwargs)
    try:
        assert real._sender._acks == -1
        assert real._txn_manager is not None
    finally:
        await real.stop()


async def test_publish_returns_only_after_the_broker_acknowledged(fake: type[FakeProducer]) -> None:
    async with EventPublisher(Settings()) as publisher:
        [producer] = fake.instances
        task = asyncio.create_task(publisher.publish(example_instance(), key="1.2.3.4"))
        await asyncio.wait_for(producer.sent.wait(), 5)
        assert await _not_done_after_the_loop_ran(task), "publish returned before the broker's ack"
        [acked] = producer.ack()
        assert await asyncio.wait_for(task, 5) is acked
        assert acked.offset == 0


async def test_publish_raises_when_the_broker_refuses(fake: type[FakeProducer]) -> None:
    async with EventPublisher(Settings()) as publisher:
        [producer] = fake.instances
        task = asyncio.create_task(publisher.publish(example_instance(), key="1.2.3.4"))
        await asyncio.wait_for(producer.sent.wait(), 5)
        producer.fail(NotEnoughReplicasError("min.insync.replicas not met"))
        with pytest.raises(PublishError, match="did not acknowledge"):
            await asyncio.wait_for(task, 5)


async def test_publish_many_returns_only_after_every_ack(fake: type[FakeProducer]) -> None:
    async with EventPublisher(Settings()) as publisher:
        [producer] = fake.instances
        task = asyncio.create_task(publisher.publish_many([(example_instance(i), "1.2.3.4") for i in range(3)]))
        await asyncio.wait_for(producer.sent.wait(), 5)
        assert await _not_done_after_the_loop_ran(task)
        assert len(producer.pending) == 3
        acked = producer.ack()
        assert await asyncio.wait_for(task, 5) == acked


async def test_publish_many_raises_when_one_ack_fails(fake: type[FakeProducer]) -> None:
    async with EventPublisher(Settings()) as publisher:
        [producer] = fake.instances
        task = asyncio.create_task(publisher.publish_many([(example_instance(i), "1.2.3.4") for i in range(2)]))
        await asyncio.wait_for(producer.sent.wait(), 5)
        assert await _not_done_after_the_loop_ran(task)
        producer.fail(KafkaTimeoutError())
        with pytest.raises(PublishError, match="did not acknowledge 2 of 2"):
            await asyncio.wait_for(task, 5)

"""The listener's librdkafka producer against the real broker of the test stack: ``wait``
returns once the broker acknowledged, and the record is then at the offset it was given,
encoded as every other event; with no broker, publishing fails fast and says the event
was certainly not sent (the listener then removes what it staged)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from cohortstream.admin import ensure_topics
from cohortstream.codec import EventCodec
from cohortstream.settings import Settings
from cohortstream.threaded_publisher import KafkaUnavailableError, PendingDelivery, ThreadedEventPublisher
from tests.examples import example_instance
from tests.integration.test_publisher_durability import _read_at


async def test_acknowledged_events_are_in_kafka_at_their_offsets(stack_settings: Settings) -> None:
    await ensure_topics(stack_settings)
    events = [example_instance(n) for n in range(6)]
    publisher = ThreadedEventPublisher(stack_settings, timeout_s=30.0)
    assert publisher.start()
    pendings: list[PendingDelivery | None] = [None] * len(events)

    def publish(index: int) -> None:  # as the association threads do, several at once
        pending = publisher.start_publish(events[index], events[index].series_instance_uid)
        pending.wait()
        pendings[index] = pending

    try:
        threads = [threading.Thread(target=publish, args=(n,)) for n in range(len(events))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        publisher.stop()
    codec = EventCodec()
    topic = stack_settings.topic("dicom.instance-received")
    for event, pending in zip(events, pendings, strict=True):
        assert pending is not None and pending.offset is not None and pending.offset >= 0
        key, value = await _read_at(
            stack_settings, SimpleNamespace(topic=topic, partition=pending.partition, offset=pending.offset)
        )
        assert key == event.series_instance_uid.encode()
        assert value is not None and codec.decode_event(value) == event


def test_without_a_broker_publishing_fails_fast_as_certainly_not_sent(stack_settings: Settings) -> None:
    settings = stack_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    publisher = ThreadedEventPublisher(settings, timeout_s=2.0)
    try:
        assert publisher.start() is False
        event = example_instance(0)
        started = time.monotonic()
        with pytest.raises(KafkaUnavailableError, match="under a second ago"):
            publisher.start_publish(event, event.series_instance_uid)
        assert time.monotonic() - started < 0.5  # no second probe within the second
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # bounded: the next probe is allowed after 1 s
            try:
                publisher.start_publish(event, event.series_instance_uid)
            except KafkaUnavailableError as exc:
                if "under a second ago" not in str(exc):
                    break
        else:
            pytest.fail("no new probe after a second")
    finally:
        publisher.stop(timeout_s=1.0)

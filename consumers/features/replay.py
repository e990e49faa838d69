"""Read the topics a features rebuild replays, from their first offset to their end when it starts.

Two sources: the source events (``ehr.record``, ``redcap.record-changed``, …; one Avro
event per lab row: complete and independent of the lane, but about 50,000 events/s), and
the features lane's compacted snapshot topic ``features.inputs`` (one message per input
document, rows columnar: :mod:`cohortstream.features.snapshot`). Neither uses a consumer
group: nothing is committed, and a rebuild never disturbs the lanes. Large fetches: the
snapshot messages are a few KB each and the point is to move them in bulk.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from cohortstream.codec import EventCodec
from cohortstream.errors import EventDecodeError
from cohortstream.events import Event
from cohortstream.kafka_security import aiokafka_security
from cohortstream.settings import Settings

__all__ = ["EVENT_TOPICS", "ReplayCounts", "latest_snapshots", "replay_events"]

EVENT_TOPICS = (
    "ehr.record",
    "redcap.record-changed",
    "dicom.instance-received",
    "annotation.suggested",
    "annotation.reviewed",
)
"""The topics the features lane folds, by logical name."""


class ReplayCounts:
    """Messages read and messages that could not be decoded (the lanes dead-lettered those)."""

    def __init__(self) -> None:
        self.messages = 0
        self.undecodable = 0


async def _partitions(settings: Settings, topics: Sequence[str]) -> list[Any]:
    """The partitions of ``topics`` (full names) that exist; a topic never created holds nothing."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-features-rebuild-admin",
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        **aiokafka_security(settings),
    )
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(d["topic"], p["partition"])
        for d in described
        if d.get("error_code") == 0
        for p in sorted(d.get("partitions", []), key=lambda p: p["partition"])
    ]


async def _read(settings: Settings, topics: Sequence[str], on_records: Callable[[list[Any]], None]) -> bool:
    """Hand every record of ``topics`` up to their end offsets to ``on_records``, in batches;
    False when none of the topics exists."""
    from aiokafka import AIOKafkaConsumer

    partitions = await _partitions(settings, topics)
    if not partitions:
        return False
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.kafka_client_id}-features-rebuild-{uuid.uuid4().hex[:6]}",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        **aiokafka_security(settings),
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        begins = await consumer.beginning_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > begins[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=50_000)
            for tp, records in batches.items():
                end = ends[tp]
                if records and records[-1].offset + 1 >= end:
                    remaining.discard(tp)
                    records = [r for r in records if r.offset < end]
                on_records(records)
    finally:
        await consumer.stop()
    return True


async def replay_events(settings: Settings, on_batch: Callable[[list[Event]], None], counts: ReplayCounts) -> None:
    """Decode every source event (typed models) and hand them to ``on_batch`` in batches."""
    codec = EventCodec()

    def decode(records: list[Any]) -> None:
        events: list[Event] = []
        for record in records:
            try:
                events.append(codec.decode_event(record.value))
            except EventDecodeError:
                counts.undecodable += 1  # the lanes dead-lettered it; nothing to fold
        counts.messages += len(events)
        on_batch(events)

    await _read(settings, [settings.topic(t) for t in EVENT_TOPICS], decode)


async def latest_snapshots(settings: Settings, topic: str, counts: ReplayCounts) -> dict[str, bytes] | None:
    """The latest value of every key of the snapshot topic (full name), tombstones applied;
    None when the topic does not exist. Values are decoded by the caller (only the latest
    of each key: before compaction a key may have many)."""
    latest: dict[str, bytes | None] = {}

    def keep(records: list[Any]) -> None:
        counts.messages += len(records)
        for record in records:
            latest[record.key.decode("utf-8")] = record.value

    if not await _read(settings, [topic], keep):
        return None
    return {k: v for k, v in latest.items() if v is not None}

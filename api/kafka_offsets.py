"""Offsets of the catalogue's topics and of the consumer groups that read them.

End offsets say how many messages each topic ever received ("in"), committed offsets how
far each group got ("out"); their difference is the consumer lag. Read with aiokafka's
admin client (committed offsets of a group) and a group-less consumer (end offsets),
both opened per call and closed again: readiness and metrics are polled every few
seconds at most, and nothing is kept open while the broker is down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from cohortstream.kafka_security import aiokafka_security
from cohortstream.lanes import lane_groups, lane_topics
from cohortstream.settings import Settings
from cohortstream.topics import TOPICS

__all__ = ["GroupOffsets", "OffsetsReport", "agents_by_group", "consumer_groups", "read_offsets"]


def consumer_groups(settings: Settings) -> list[str]:
    """The groups whose lag is reported: the worker's lanes (``<app_id>-<lane>``), the
    worker run as one app (``app_id``), and the annotator's."""
    return [settings.app_id, *lane_groups(settings), f"{settings.app_id}-annotator"]


def agents_by_group(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Consumer group → the agents it runs (to name them in stall reports)."""
    return {
        settings.app_id: ("every worker agent",),
        **lane_groups(settings),
        f"{settings.app_id}-annotator": ("annotation-on-series-completed", "annotation-on-request"),
    }


@dataclass(frozen=True)
class GroupOffsets:
    """One group's committed offsets and lag per topic (logical names); only topics it committed on."""

    group: str
    committed: dict[str, int]
    lag: dict[str, int]


@dataclass(frozen=True)
class OffsetsReport:
    """End offsets per topic (summed over partitions) and every group's position."""

    end: dict[str, int]
    groups: list[GroupOffsets] = field(default_factory=list)


async def read_offsets(settings: Settings, groups: list[str] | None = None, *, timeout_s: float = 5.0) -> OffsetsReport:
    """Read end and committed offsets; ``TimeoutError`` or a ``KafkaError`` when the broker does not answer.

    A partition a group has not committed on counts as committed at 0, so its lag is
    every message in it (right for a group that reads from the earliest offset, as ours
    do; an overestimate once retention deleted old messages).
    """
    groups = consumer_groups(settings) if groups is None else groups
    names = {spec.full_name(settings): spec.name for spec in TOPICS}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-offsets",
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
        **aiokafka_security(settings),
    )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-offsets-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **aiokafka_security(settings),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            await admin.start()
            # describe_topics asks for our topics only (a shared cluster may hold thousands);
            # a topic not created yet comes back with an error code and is left out.
            described = await admin.describe_topics(sorted(names))
            existing = {d["topic"] for d in described if d.get("error_code") == 0}
            partitions = [
                TopicPartition(d["topic"], p["partition"])
                for d in described
                if d["topic"] in existing
                for p in sorted(d.get("partitions", []), key=lambda p: p["partition"])
            ]
            ends = await consumer.end_offsets(partitions) if partitions else {}
            end_by_topic = {name: 0 for full, name in names.items() if full in existing}
            for tp, offset in ends.items():
                end_by_topic[names[tp.topic]] += offset
            reports = []
            consumed = lane_topics(settings)
            for group in groups:
                committed_tp = await admin.list_consumer_group_offsets(group)
                reports.append(_group_report(group, committed_tp, ends, names, consumed.get(group, ())))
    finally:
        await asyncio.gather(consumer.stop(), admin.close(), return_exceptions=True)
    return OffsetsReport(end=end_by_topic, groups=reports)


def _group_report(
    group: str,
    committed_tp: dict[TopicPartition, object],
    ends: dict[TopicPartition, int],
    names: dict[str, str],
    consumes: tuple[str, ...] = (),
) -> GroupOffsets:
    """The group's position on the topics it committed on, and on ``consumes`` (logical
    names of the topics it is known to read) even before its first commit."""
    committed: dict[str, int] = {}
    lag: dict[str, int] = {}
    positions = {tp: getattr(meta, "offset", -1) for tp, meta in committed_tp.items()}
    topics = {tp.topic for tp, offset in positions.items() if tp.topic in names and offset >= 0}
    topics |= {full for full, name in names.items() if name in consumes}
    for tp, end in ends.items():
        if tp.topic not in topics:
            continue
        name = names[tp.topic]
        position = max(positions.get(tp, 0), 0)
        committed[name] = committed.get(name, 0) + position
        lag[name] = lag.get(name, 0) + max(end - position, 0)
    return GroupOffsets(group=group, committed=committed, lag=lag)

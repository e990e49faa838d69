"""Kafka administration: create the catalogue's topics before anything produces to them.

Creating topics explicitly (instead of relying on broker auto-creation) gives them the
partition count and replication factor from settings, and ``min.insync.replicas`` that
makes ``acks=all`` meaningful when the replication factor is above one.

:func:`ensure_topics` also waits until the worker lanes' consumer groups have a group
coordinator. A new broker creates its ``__consumer_offsets`` topic when the first group
asks for a coordinator, and until it is loaded every consumer that asks logs an ERROR
(aiokafka: "GroupCoordinatorNotAvailableError"); waiting here, once, keeps a fresh
``make up`` free of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError, GroupLoadInProgressError, KafkaError

from cohortstream.errors import CohortStreamError
from cohortstream.kafka_security import aiokafka_security
from cohortstream.lanes import lane_groups
from cohortstream.settings import Settings
from cohortstream.topics import COMPACTED_TOPIC_MAX_MESSAGE_BYTES, COMPACTED_TOPICS, TOPICS

__all__ = ["await_group_coordinators", "ensure_compacted_topics", "ensure_topics"]

#: What a broker answers while its group coordinator is still being created or loaded.
COORDINATOR_NOT_READY = (GroupCoordinatorNotAvailableError, GroupLoadInProgressError)


def _compacted(settings: Settings, existing: set[str]) -> list[NewTopic]:
    return [
        NewTopic(
            name=settings.topic(name),
            num_partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            topic_configs={
                "min.insync.replicas": str(min(2, settings.topic_replication_factor)),
                "cleanup.policy": "compact",
                "max.message.bytes": str(COMPACTED_TOPIC_MAX_MESSAGE_BYTES),
                # The lane republishes a document at each recomputation: roll segments hourly
                # and clean at 10% dirty, so the superseded values go within hours, not the
                # default week (a rebuild reads them all and keeps the latest).
                "segment.ms": str(3_600_000),
                "min.cleanable.dirty.ratio": "0.1",
            },
        )
        for name in COMPACTED_TOPICS
        if settings.topic(name) not in existing
    ]


async def await_group_coordinators(
    admin: AIOKafkaAdminClient, groups: Iterable[str], timeout_s: float, interval_s: float = 0.2
) -> None:
    """Ask ``admin``'s broker for each group's coordinator until it has one, at most
    ``timeout_s`` in all. Raise :class:`CohortStreamError` naming the group that has none
    by then; any other Kafka error propagates at once."""
    deadline = time.monotonic() + timeout_s
    for group in groups:
        while True:
            try:
                await admin.find_coordinator(group)
                break
            except COORDINATOR_NOT_READY as exc:
                if time.monotonic() >= deadline:
                    raise CohortStreamError(
                        f"Kafka has no group coordinator for consumer group {group!r} after {timeout_s:g} s: {exc}"
                    ) from exc
                await asyncio.sleep(interval_s)


async def _create_missing(
    settings: Settings,
    wanted_of: Callable[[set[str]], list[NewTopic]],
    what: str,
    groups: Iterable[str] = (),
) -> list[str]:
    """Create the topics ``wanted_of(existing topic names)`` returns, then wait for the
    coordinators of ``groups``; the names of the topics created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-admin",
        **aiokafka_security(settings),
    )
    try:
        await admin.start()
        wanted = wanted_of(set(await admin.list_topics()))
        if wanted:
            await admin.create_topics(wanted)
        await await_group_coordinators(admin, groups, settings.kafka_request_timeout_s)
        return [topic.name for topic in wanted]
    except KafkaError as exc:
        raise CohortStreamError(f"cannot create {what} on {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()


async def ensure_compacted_topics(settings: Settings) -> list[str]:
    """Create the compacted state topics that do not exist yet (the features lane calls this
    when it starts, so a stack made before the snapshot topic existed gets it)."""
    return await _create_missing(settings, lambda existing: _compacted(settings, existing), "the compacted topics")


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every catalogue topic (and the compacted state topics) that does not exist yet,
    and wait until every worker lane's consumer group has a coordinator; return the names
    created."""
    min_isr = str(min(2, settings.topic_replication_factor))

    def wanted_of(existing: set[str]) -> list[NewTopic]:
        catalogue = [
            NewTopic(
                name=spec.full_name(settings),
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs={"min.insync.replicas": min_isr},
            )
            for spec in TOPICS
            if spec.full_name(settings) not in existing
        ]
        return catalogue + _compacted(settings, existing)

    return await _create_missing(settings, wanted_of, "topics", groups=lane_groups(settings))

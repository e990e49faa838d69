"""Kafka administration: create the catalogue's topics before anything produces to them.

Creating topics explicitly (instead of relying on broker auto-creation) gives them the
partition count and replication factor from settings, and ``min.insync.replicas`` that
makes ``acks=all`` meaningful when the replication factor is above one.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from cohortstream.errors import CohortStreamError
from cohortstream.kafka_security import aiokafka_security
from cohortstream.settings import Settings
from cohortstream.topics import COMPACTED_TOPIC_MAX_MESSAGE_BYTES, COMPACTED_TOPICS, TOPICS

__all__ = ["ensure_compacted_topics", "ensure_topics"]


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


async def _create_missing(settings: Settings, wanted_of: Callable[[set[str]], list[NewTopic]], what: str) -> list[str]:
    """Create the topics ``wanted_of(existing topic names)`` returns; their names."""
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
    """Create every catalogue topic (and the compacted state topics) that does not exist yet;
    return the names created."""
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

    return await _create_missing(settings, wanted_of, "topics")

"""Archive dead letters in MongoDB so operators can list, count and replay them.

One document per dead letter, keyed by the dead letter's own ``event_id``: a redelivered
dead letter (at-least-once) upserts the same document, so the archive is idempotent.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cohortstream.events import DeadLetter
from consumers.mongo_sink import IndexSpec, MongoSink

__all__ = ["COLLECTION", "DeadLetterArchive", "dead_letter_document"]

COLLECTION = "dead_letters"


def dead_letter_document(letter: DeadLetter, *, topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The archive document for ``letter`` read from ``topic``/``partition``/``offset``."""
    return {
        "_id": str(letter.event_id),
        "dead_lettered_at": letter.emitted_at,
        "producer": letter.producer,
        "stage": letter.stage.value,
        "error_type": letter.error_type,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "source": {
            "topic": letter.source_topic,
            "partition": letter.source_partition,
            "offset": letter.source_offset,
            "location": letter.source_location,
        },
        "key": letter.key,
        "value": letter.value,
        "value_size": len(letter.value or b""),
        "archived_from": {"topic": topic, "partition": partition, "offset": offset},
    }


class DeadLetterArchive(MongoSink):
    """The MongoDB sink of the dead-letter topic (index for the operator's newest-first query)."""

    INDEXES: ClassVar[IndexSpec] = {COLLECTION: ["dead_lettered_at"]}

    async def archive(self, letter: DeadLetter, *, topic: str, partition: int, offset: int) -> None:
        """Upsert the document for ``letter``; retries while MongoDB is unreachable."""
        document = dead_letter_document(letter, topic=topic, partition=partition, offset=offset)
        collection = self.db[COLLECTION]
        await self.retry(
            lambda: collection.update_one(
                {"_id": document["_id"]},
                {"$setOnInsert": {k: v for k, v in document.items() if k != "_id"}},
                upsert=True,
            ),
            "archive dead letter",
        )

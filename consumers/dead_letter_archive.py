"""Archive dead letters in MongoDB so operators can list, count and replay them.

One document per dead letter, keyed by the dead letter's own ``event_id``: a redelivered
dead letter (at-least-once) upserts the same document, so the archive is idempotent.
"""

from __future__ import annotations

from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection
from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError

from cohortstream.events import DeadLetter
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.settings import Settings
from consumers.backoff import retry_transient

__all__ = ["COLLECTION", "DeadLetterArchive", "dead_letter_document"]

COLLECTION = "dead_letters"
_TRANSIENT = (AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError)


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


class DeadLetterArchive:
    """The MongoDB sink of the dead-letter topic."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AsyncIOMotorClient | None = None
        self._collection: AsyncIOMotorCollection | None = None

    async def setup(self) -> None:
        """Connect and make sure the operator's query (newest first) has an index."""
        self._client = mongo_client(self._settings)
        self._collection = mongo_database(self._client, self._settings)[COLLECTION]
        await retry_transient(
            lambda: self._collection.create_index("dead_lettered_at"),  # type: ignore[union-attr]
            what="create dead_letters index",
            transient=_TRANSIENT,
        )

    async def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def archive(self, letter: DeadLetter, *, topic: str, partition: int, offset: int) -> None:
        """Upsert the document for ``letter``; retries while MongoDB is unreachable."""
        if self._collection is None:
            raise RuntimeError("DeadLetterArchive.setup() was not awaited")
        document = dead_letter_document(letter, topic=topic, partition=partition, offset=offset)
        collection = self._collection
        await retry_transient(
            lambda: collection.update_one(
                {"_id": document["_id"]},
                {"$setOnInsert": {k: v for k, v in document.items() if k != "_id"}},
                upsert=True,
            ),
            what="archive dead letter",
            transient=_TRANSIENT,
        )

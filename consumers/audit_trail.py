"""Keep the audit trail: every ``AccessAudited`` event as one document, inserted, never changed.

The collection is append-only by construction: this sink only *inserts* (keyed by the
event's own id), and no code in the project updates or deletes its documents. A
redelivered event (at-least-once) hits the duplicate key and is skipped, so a replay of
the topic leaves the trail as it was. Indexes serve the two questions the trail answers:
who accessed a subject (``subject_ids`` + time) and what a key did (``actor_id`` + time).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

from pymongo.errors import BulkWriteError

from cohortstream.events import AccessAudited
from consumers.mongo_sink import IndexSpec, MongoSink, chunks

__all__ = ["COLLECTION", "AuditTrail", "audit_document"]

COLLECTION = "audit_trail"
_DUPLICATE_KEY = 11000


def audit_document(event: AccessAudited) -> dict[str, Any]:
    """The trail's document for ``event`` (``at`` is when the access happened)."""
    return {
        "_id": str(event.event_id),
        "at": event.emitted_at,
        "producer": event.producer,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "actor_role": event.actor_role,
        "action": event.action,
        "endpoint": event.endpoint,
        "query_sha256": event.query_sha256,
        "subject_ids": list(event.subject_ids),
        "subject_count": event.subject_count,
        "subject_ids_truncated": event.subject_ids_truncated,
        "outcome": event.outcome.value,
        "status": event.status,
        "source_address": event.source_address,
    }


class AuditTrail(MongoSink):
    """The insert-only MongoDB sink of the audit topic."""

    INDEXES: ClassVar[IndexSpec] = {COLLECTION: [["subject_ids", "at"], ["actor_id", "at"], "at"]}

    async def apply(self, events: Sequence[AccessAudited]) -> int:
        """Insert the documents of ``events``; returns how many were new (replays add none)."""
        documents = [audit_document(event) for event in events]
        inserted = 0
        for chunk in chunks(documents):
            inserted += await self.retry(partial(self._insert, chunk), "insert audit events")
        return inserted

    async def _insert(self, documents: list[dict[str, Any]]) -> int:
        try:
            result = await self.db[COLLECTION].insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != _DUPLICATE_KEY for error in errors):
                raise
            return int(exc.details.get("nInserted", len(documents) - len(errors)))
        return len(result.inserted_ids)

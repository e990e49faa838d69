"""Where the change feed stands in Orthanc's log, kept in the view store.

One document in the ``orthanc_feed`` collection (``_id`` = ``checkpoint``): the sequence
number of the last change whose events Kafka acknowledged, and the gap, if the feed
found its position gone from Orthanc's log (cleared by a reconciliation).

Why the view store and not a Kafka topic: it is already the store every process reads
(the API shows the feed's state from it), and a single upserted document needs no
compaction or partition assignment. The order of writes makes a restart exact: a page's
events are acknowledged by Kafka *before* the checkpoint moves past them, so a crash in
between publishes that one page again (the sinks are idempotent by SOP Instance UID) and
never skips one; a restart reads from the checkpoint, not from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cohortstream.mongo import AsyncDatabase

__all__ = ["COLLECTION", "Checkpoint", "CheckpointStore"]

COLLECTION = "orthanc_feed"
_ID = "checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """The stored position and, if any, the unreconciled gap."""

    seq: int
    gap: dict[str, Any] | None


class CheckpointStore:
    """Reads and moves the feed's checkpoint."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._collection = db[COLLECTION]

    async def load(self) -> Checkpoint | None:
        """The checkpoint, or None before the feed's first page."""
        doc = await self._collection.find_one({"_id": _ID})
        if doc is None or doc.get("seq") is None:
            return None
        return Checkpoint(seq=int(doc["seq"]), gap=doc.get("gap"))

    async def save(self, seq: int) -> None:
        """Move the checkpoint to ``seq`` (only forward: a slower writer never moves it back)."""
        now = datetime.now(UTC)
        await self._collection.update_one(
            {"_id": _ID}, {"$max": {"seq": seq}, "$set": {"updated_at": now}}, upsert=True
        )

    async def reset(self, seq: int) -> None:
        """Put the checkpoint at ``seq``, also backwards (Orthanc's log restarted)."""
        await self._collection.update_one(
            {"_id": _ID}, {"$set": {"seq": seq, "updated_at": datetime.now(UTC)}}, upsert=True
        )

    async def record_gap(self, after_seq: int, resumed_at_seq: int, reason: str) -> None:
        """Keep the gap until a reconciliation clears it (health reports it until then)."""
        gap = {"after_seq": after_seq, "resumed_at_seq": resumed_at_seq, "reason": reason, "at": datetime.now(UTC)}
        await self._collection.update_one({"_id": _ID}, {"$set": {"gap": gap}}, upsert=True)

    async def clear_gap(self) -> None:
        """A reconciliation published whatever Orthanc holds and the views lacked."""
        await self._collection.update_one(
            {"_id": _ID}, {"$set": {"gap": None, "reconciled_at": datetime.now(UTC)}}, upsert=True
        )

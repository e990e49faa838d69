"""What every MongoDB view builder shares: connect in ``setup()``, bounded retries of
transient failures that turn into backpressure, and bulk writes sized for FerretDB.

Only the MongoDB API subset that both MongoDB and FerretDB v1 serve is used (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import UpdateOne
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ServerSelectionTimeoutError,
)

from cohortstream.mongo import mongo_client, mongo_database, safe_key
from cohortstream.settings import Settings
from consumers.backoff import retry_transient

__all__ = ["TRANSIENT_MONGO_ERRORS", "WRITE_CHUNK", "MongoSink", "UpsertRaceError", "chunks", "safe_key"]

T = TypeVar("T")

WRITE_CHUNK = 50
"""Most statements sent in one ``update`` command. FerretDB v1 holds a pooled SQLite
connection per statement that matches an existing document until the whole command ends,
so a command with ~100 such statements waits forever for its own connections (seen with
batches of 200). MongoDB has no such limit; 50 keeps a margin and costs little."""


class UpsertRaceError(Exception):
    """Two upserts of the same new ``_id`` raced and one lost with a duplicate-key error.

    MongoDB retries such upserts itself; FerretDB does not. Every write of the sinks is an
    upsert by ``_id`` (the only unique index), so trying again simply updates the
    document the other writer inserted.
    """


TRANSIENT_MONGO_ERRORS = (AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError, UpsertRaceError)


async def _racing_upserts_retryable(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except DuplicateKeyError as exc:
        raise UpsertRaceError(str(exc)) from exc
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if errors and all(error.get("code") == 11000 for error in errors):
            raise UpsertRaceError(f"{len(errors)} upsert(s) lost a race") from exc
        raise
    except KeyError as exc:
        # FerretDB v1 answers an update batch in which an upsert lost such a race without
        # the ``nModified`` field, and pymongo's bulk result merge then fails with
        # KeyError('nModified') instead of raising BulkWriteError (seen in the ingest
        # benchmark when the archive and views agents upsert one new instance at once).
        if exc.args == ("nModified",):
            raise UpsertRaceError("an upsert lost a race (FerretDB reply without nModified)") from exc
        raise


def chunks(items: Sequence[T], size: int = WRITE_CHUNK) -> list[list[T]]:
    """``items`` cut into lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class MongoSink:
    """Base of the view builders: a motor connection made in :meth:`setup` and retries.

    Subclasses list the indexes their queries need in ``INDEXES`` (collection → fields;
    a field may be a list of names for a compound index).
    """

    INDEXES: Mapping[str, Sequence[str | Sequence[str]]] = {}

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AsyncIOMotorClient | None = None
        self._db: AsyncIOMotorDatabase | None = None

    async def setup(self) -> None:
        """Connect and create the indexes the queries use (idempotent)."""
        if self._client is None:
            self._client = mongo_client(self._settings)
            self._db = mongo_database(self._client, self._settings)
        for collection, fields in self.INDEXES.items():
            for field in fields:
                keys = field if isinstance(field, str) else [(name, 1) for name in field]
                await self.retry(
                    lambda c=collection, k=keys: self.db[c].create_index(k), f"index {collection}.{field}"
                )

    async def close(self) -> None:
        """Disconnect (safe to call twice)."""
        if self._client is not None:
            self._client.close()
            self._client = None
            self._db = None

    @property
    def db(self) -> AsyncIOMotorDatabase:
        if self._db is None:
            raise RuntimeError(f"{type(self).__name__}.setup() was not awaited")
        return self._db

    async def retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``operation``, retrying transient MongoDB failures until it succeeds.

        After ``sink_retry_attempts`` quick tries the sink counts as paused (the agent
        stops taking new messages, so nothing is committed that was not applied) and keeps
        trying with backoff up to ``sink_retry_max_delay_s`` between attempts.
        """
        return await retry_transient(
            lambda: _racing_upserts_retryable(operation),
            what=what,
            transient=TRANSIENT_MONGO_ERRORS,
            pause_after=self._settings.sink_retry_attempts,
            max_delay_s=self._settings.sink_retry_max_delay_s,
        )

    async def bulk_write(self, collection: str, operations: Sequence[UpdateOne], what: str) -> None:
        """Send ``operations`` in order, at most :data:`WRITE_CHUNK` per command."""
        for chunk in chunks(operations):
            await self.retry(lambda ops=chunk: self.db[collection].bulk_write(ops, ordered=True), what)

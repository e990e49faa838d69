"""What every MongoDB view builder shares: connect in ``setup()``, lost connectivity
retried as backpressure, any other error bounded, and bulk writes in commands of a
sensible size.

Only the MongoDB API that both the local server (secantusd-rs) and MongoDB 7 serve is
used (docs/view-store.md lists it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar

from pymongo import UpdateOne
from pymongo.errors import ConnectionFailure

from cohortstream.backoff import retry_transient
from cohortstream.mongo import AsyncClient, AsyncDatabase, mongo_client, mongo_database, safe_key
from cohortstream.settings import Settings

IndexSpec = Mapping[str, Sequence[str | Sequence[str]]]
"""Collection → the fields to index (a field may be a list of names for a compound index)."""

__all__ = [
    "TOGETHER_LIMIT",
    "TRANSIENT_MONGO_ERRORS",
    "WRITE_CHUNK",
    "IndexSpec",
    "MongoSink",
    "chunks",
    "safe_key",
    "together",
]

T = TypeVar("T")

WRITE_CHUNK = 500
"""Most statements sent in one write command: large enough that a batch of a view agent
is one or two round trips, small enough that one command stays well under MongoDB's
16 MB message and a slow command does not hold a server thread for long. (FerretDB v1,
the previous local server, deadlocked above ~100 statements and needed 50.)"""

TRANSIENT_MONGO_ERRORS: tuple[type[BaseException], ...] = (ConnectionFailure,)
"""Lost connectivity (``AutoReconnect``, ``NetworkTimeout``, ``ServerSelectionTimeoutError``
all derive from it): the only MongoDB failure that is backpressure. A duplicate key, a
refused command or a reply pymongo cannot read is tried ``sink_error_attempts`` times,
then its events are dead-lettered (cohortstream/backoff.py)."""


def chunks(items: Sequence[T], size: int = WRITE_CHUNK) -> list[list[T]]:
    """``items`` cut into lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


TOGETHER_LIMIT = 16
"""Most operations :func:`together` keeps in flight (the client's pool holds 100 connections)."""


async def together(*operations: Awaitable[Any], limit: int = TOGETHER_LIMIT) -> list[Any]:
    """Await independent ``operations`` at the same time; their results in order.

    A sink's batch is mostly round trips to the view store, and each costs a scheduling
    delay on a busy machine as well as the server's time: queries that do not depend on
    each other go out together (the client's connection pool carries them), so the batch
    waits for the slowest instead of the sum. When one fails the others are cancelled and
    its exception propagates as it is (not wrapped in an ``ExceptionGroup``), so callers
    see the same errors as when the operations ran one after another. At most ``limit``
    run at once.
    """
    gate = asyncio.Semaphore(limit)

    async def gated(operation: Awaitable[Any]) -> Any:
        async with gate:
            return await operation

    tasks = [asyncio.ensure_future(gated(operation)) for operation in operations]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        # Let the cancelled ones finish before the caller goes on (no write may still be
        # running when a batch is retried event by event).
        await asyncio.gather(*tasks, return_exceptions=True)


class MongoSink:
    """Base of the view builders: a MongoDB connection made in :meth:`setup` and retries.

    Subclasses list the indexes their queries need in ``INDEXES`` (collection → fields;
    a field may be a list of names for a compound index).
    """

    INDEXES: ClassVar[IndexSpec] = {}

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AsyncClient | None = None
        self._db: AsyncDatabase | None = None

    async def setup(self) -> None:
        """Connect and create the indexes the queries use (idempotent)."""
        if self._client is None:
            self._client = mongo_client(self._settings)
            self._db = mongo_database(self._client, self._settings)
        for collection, fields in self.INDEXES.items():
            for field in fields:
                keys = field if isinstance(field, str) else [(name, 1) for name in field]
                await self.retry(partial(self.db[collection].create_index, keys), f"index {collection}.{field}")

    async def close(self) -> None:
        """Disconnect (safe to call twice)."""
        if self._client is not None:
            client, self._client, self._db = self._client, None, None
            await client.close()

    @property
    def db(self) -> AsyncDatabase:
        if self._db is None:
            raise RuntimeError(f"{type(self).__name__}.setup() was not awaited")
        return self._db

    async def retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``operation``, retrying lost connectivity until it succeeds.

        After ``sink_retry_attempts`` quick tries the sink counts as paused (the agent
        stops taking new messages, so nothing is committed that was not applied) and keeps
        trying with backoff up to ``sink_retry_max_delay_s`` between attempts. Any other
        error is raised after ``sink_error_attempts`` tries, for the agent to dead-letter.
        """
        return await retry_transient(
            operation,
            what=what,
            transient=TRANSIENT_MONGO_ERRORS,
            pause_after=self._settings.sink_retry_attempts,
            max_delay_s=self._settings.sink_retry_max_delay_s,
            other_attempts=self._settings.sink_error_attempts,
        )

    async def bulk_write(self, collection: str, operations: Sequence[UpdateOne], what: str) -> None:
        """Send ``operations`` in order, at most :data:`WRITE_CHUNK` per command."""
        for chunk in chunks(operations):
            await self.retry(partial(self.db[collection].bulk_write, chunk, ordered=True), what)

"""Connecting to the MongoDB API (the local view store in development, MongoDB in
deployment) through PyMongo's async API: the one module that imports the driver's client,
database and collection types. Sinks, the API, the CLI, tests and benchmarks take the
aliases below from here.

We moved from motor to ``pymongo.AsyncMongoClient`` because motor is deprecated (critical
fixes only until 2027-05-14) and its maintainers name PyMongo's async API as its successor.

What differs from the former driver, for whoever writes a caller:

- ``await client.close()``: closing is a coroutine (use :func:`open_database` where a
  client lives for one piece of work);
- a client belongs to the first event loop that uses it (``RuntimeError`` in another
  loop) and is not thread-safe: make one per loop, never share one across threads;
- ``aggregate()``, ``list_indexes()``, ``list_collections()`` and ``watch()`` are
  coroutines that return the cursor: ``await (await coll.aggregate(p)).to_list()``;
- ``cursor.to_list()`` reads everything; ``to_list(0)`` is refused.

Only the subset both servers implement is used (docs/view-store.md): no transactions, no
change streams, no ``$lookup``/``$facet``; ``$group`` with ``$sum``/``$count`` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection as _AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase as _AsyncDatabase

from cohortstream.settings import Settings

__all__ = [
    "AsyncClient",
    "AsyncCollection",
    "AsyncDatabase",
    "Document",
    "aggregate_all",
    "client_for_url",
    "find_all",
    "mongo_client",
    "mongo_database",
    "open_database",
    "safe_key",
]

Document: TypeAlias = dict[str, Any]
"""A document as the views hold it (the clients decode to plain dicts)."""

AsyncClient: TypeAlias = AsyncMongoClient[Document]
"""The async client (``pymongo.AsyncMongoClient``)."""

AsyncDatabase: TypeAlias = _AsyncDatabase[Document]
"""A database of that client; ``db[name]`` is an :data:`AsyncCollection`."""

AsyncCollection: TypeAlias = _AsyncCollection[Document]


def client_for_url(url: str, **options: Any) -> AsyncClient:
    """A client for ``url`` with the project's defaults (timezone-aware datetimes, 10 s to
    find a server); ``options`` (PyMongo's client options) override or add to them.

    It connects lazily, in the event loop that first uses it (it may be created outside a
    loop). Close it with ``await client.close()``.
    """
    defaults: dict[str, Any] = {"serverSelectionTimeoutMS": 10_000, "tz_aware": True}
    return AsyncMongoClient(url, **{**defaults, **options})


def mongo_client(settings: Settings) -> AsyncClient:
    """A client for the configured server (see :func:`client_for_url`)."""
    return client_for_url(settings.mongo_url.get_secret_value(), appname=settings.kafka_client_id)


def mongo_database(client: AsyncClient, settings: Settings) -> AsyncDatabase:
    """The database that holds the cohortstream views."""
    return client[settings.mongo_database]


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[AsyncDatabase]:
    """The views database of a client that lives for the ``async with`` block, closed after."""
    client = mongo_client(settings)
    try:
        yield mongo_database(client, settings)
    finally:
        await client.close()


async def find_all(
    collection: AsyncCollection, query: Mapping[str, Any], projection: Mapping[str, Any] | None = None
) -> list[Document]:
    """Every document ``query`` matches, as a list (``find(...).to_list()``, awaitable as one
    call so a sink can hand it to its retry loop with :func:`functools.partial`)."""
    return await collection.find(query, projection).to_list()


async def aggregate_all(collection: AsyncCollection, pipeline: Sequence[Mapping[str, Any]]) -> list[Document]:
    """Every document ``pipeline`` yields, as a list (awaitable as one call, like
    :func:`find_all`). Only what both servers serve: ``$match`` and ``$group`` with ``$sum``."""
    cursor = await collection.aggregate(pipeline)
    return await cursor.to_list()


def safe_key(text: str) -> str:
    """``text`` usable as a field name inside a document (no ``.``, no leading ``$``).

    Codes such as LOINC ``2160-0`` or ICD ``E11.9`` become map keys in the views; a dot
    would be read as a path and a leading ``$`` as an operator.
    """
    return text.replace(".", "_").replace("$", "_")

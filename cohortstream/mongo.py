"""Connecting to the MongoDB API (FerretDB locally, MongoDB in deployment) through motor.

Only the subset both servers implement is used (see DESIGN.md): no transactions, no
change streams, no ``$lookup``/``$facet``; ``$group`` with ``$sum``/``$count`` only.
"""

from __future__ import annotations

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase

from cohortstream.settings import Settings

__all__ = ["mongo_client", "mongo_database", "safe_key"]


def mongo_client(settings: Settings) -> AsyncIOMotorClient:
    """A motor client for the configured server; connects lazily on first use."""
    return AsyncIOMotorClient(
        settings.mongo_url.get_secret_value(),
        appname=settings.kafka_client_id,
        serverSelectionTimeoutMS=10_000,
        tz_aware=True,
    )


def mongo_database(client: AsyncIOMotorClient, settings: Settings) -> AsyncIOMotorDatabase:
    """The database that holds the cohortstream views."""
    return client[settings.mongo_database]


def safe_key(text: str) -> str:
    """``text`` usable as a field name inside a document (no ``.``, no leading ``$``).

    Codes such as LOINC ``2160-0`` or ICD ``E11.9`` become map keys in the views; a dot
    would be read as a path and a leading ``$`` as an operator.
    """
    return text.replace(".", "_").replace("$", "_")

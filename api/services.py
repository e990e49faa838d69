"""The connections the routers share, opened by the application's lifespan.

One object per application, reached through ``request.app.state.services``, instead of
module globals: tests build an application per test against their own database and
topics, and nothing is connected at import time.

Kafka being down when the API starts does not stop it: reads keep working from MongoDB
and every review answers 503 until the publisher connects on a later request (at most
one attempt at a time), the same policy as the REDCap trigger endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field

from aiokafka.structs import RecordMetadata
from fastapi import Request

from api.annotation_store import AnnotationStore
from api.consumer_stalls import StallTracker
from api.errors import ApiError
from api.kafka_offsets import agents_by_group
from cohortstream.events import Event
from cohortstream.mongo import AsyncClient, AsyncDatabase, mongo_client, mongo_database
from cohortstream.orthanc import OrthancClient
from cohortstream.publisher import EventPublisher, PublishError
from cohortstream.settings import Settings

__all__ = ["ApiServices", "get_services"]

log = logging.getLogger(__name__)


@dataclass
class ApiServices:
    """MongoDB, the Kafka publisher and the Orthanc archive of one API application."""

    settings: Settings
    publisher: EventPublisher
    archive: OrthancClient
    client: AsyncClient | None = None
    db: AsyncDatabase | None = None
    _publisher_started: bool = False
    _publisher_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _pool: Executor | None = None
    stalls: StallTracker | None = None

    def __post_init__(self) -> None:
        if self.stalls is None:
            self.stalls = StallTracker(self.settings.consumer_stall_after_s, agents_by_group(self.settings))

    async def open(self) -> None:
        """Connect what can be connected; Kafka may stay down (see the module docstring)."""
        self.client = mongo_client(self.settings)
        self.db = mongo_database(self.client, self.settings)
        await self.archive.setup()
        try:
            await self._ensure_publisher()
        except PublishError as exc:
            log.error("Kafka unreachable at start; reviews get 503 until it is back", extra={"error": str(exc)})

    async def close(self) -> None:
        """Flush and close everything :meth:`open` and the requests opened."""
        await self.publisher.stop()
        self._publisher_started = False
        await self.archive.close()
        if self.client is not None:
            client, self.client, self.db = self.client, None, None
            await client.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def ensure_publisher(self) -> None:
        """Start the publisher if it is not (yet) connected; :class:`PublishError` if Kafka is down."""
        await self._ensure_publisher()

    async def _ensure_publisher(self) -> None:
        async with self._publisher_lock:
            if not self._publisher_started:
                await self.publisher.start()
                self._publisher_started = True

    async def publish(self, event: Event, key: str) -> RecordMetadata:
        """Publish and wait for Kafka's acknowledgement; :class:`PublishError` if none came."""
        await self._ensure_publisher()
        return await self.publisher.publish(event, key=key)

    def connected_db(self) -> AsyncDatabase:
        """The views database, or **503** for a request that needs it while it is not connected."""
        if self.db is None:
            raise ApiError(503, "database not connected")
        return self.db

    def require_db(self) -> AsyncDatabase:
        """The views database (the lifespan opened it)."""
        if self.db is None:
            raise RuntimeError("ApiServices.open() was not awaited")
        return self.db

    @property
    def store(self) -> AnnotationStore:
        """Read-only queries of the views."""
        if self.db is None:
            raise RuntimeError("ApiServices.open() was not awaited")
        return AnnotationStore(self.db)

    def discard_inference_pool(self) -> None:
        """Forget a broken pool (its process died); the next ``/infer`` starts a fresh one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def inference_pool(self) -> Executor:
        """The process that runs models for ``/infer`` (started on first use: torch is slow to import)."""
        if self._pool is None:
            from consumers.annotation.worker import process_pool

            self._pool = process_pool()
        return self._pool


def get_services(request: Request) -> ApiServices:
    """FastAPI dependency: the services of the application serving ``request``."""
    return request.app.state.services  # type: ignore[no-any-return]

"""The sync-to-async bridge between pynetdicom's DIMSE threads and the Kafka publisher.

The publisher's asyncio loop runs in one background thread owned by :class:`KafkaBridge`;
the DIMSE threads (one per association) hand it work with
``asyncio.run_coroutine_threadsafe`` and wait at most ``dicom_scp_publish_timeout_s``, so
they never block that loop.

If Kafka cannot be reached when the listener starts, :meth:`KafkaBridge.start` says so and
the listener runs anyway: each publish tries to connect again (at most one connection
attempt per second, shared by all associations) and raises
:class:`KafkaUnavailableError` meanwhile, which the C-STORE handler answers with 0xA700.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from cohortstream.events import DicomInstanceReceived
from cohortstream.publisher import EventPublisher, PublishError
from cohortstream.settings import Settings

__all__ = ["KafkaBridge", "KafkaUnavailableError", "PendingPublish", "PublishTimeoutError"]

log = logging.getLogger(__name__)

_MIN_RECONNECT_INTERVAL_S = 1.0


class PublishTimeoutError(PublishError):
    """Kafka did not acknowledge in time; the event may still be appended later."""


class KafkaUnavailableError(PublishError):
    """No connection to Kafka: the event was certainly not sent."""


class PendingPublish:
    """A publish handed to the loop; :meth:`wait` blocks (bounded) for the broker's ack."""

    def __init__(self, future: concurrent.futures.Future[None], timeout_s: float) -> None:
        self._future = future
        self._timeout_s = timeout_s

    def wait(self) -> None:
        """Return once Kafka acknowledged; raise :class:`PublishError` (or a subclass) otherwise."""
        try:
            self._future.result(timeout=self._timeout_s)
        except concurrent.futures.TimeoutError as exc:
            self._future.cancel()
            raise PublishTimeoutError(f"no acknowledgement from Kafka within {self._timeout_s}s") from exc


class KafkaBridge:
    """Owns the publisher and its event loop thread; DIMSE threads call :meth:`start_publish`."""

    def __init__(self, settings: Settings, publisher_factory: Callable[[Settings], EventPublisher]) -> None:
        self._settings = settings
        self._factory = publisher_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dicom-scp-kafka", daemon=True)
        self._publisher: EventPublisher | None = None
        self._connecting: asyncio.Task[EventPublisher] | None = None
        self._last_failure: float | None = None
        self._last_error = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> bool:
        """Start the loop thread and try to connect; ``False`` if Kafka is unreachable now."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._ensure_connected(), self._loop)
        try:
            future.result(timeout=self._settings.dicom_scp_publish_timeout_s)
        except (PublishError, concurrent.futures.TimeoutError) as exc:
            log.error(
                "Kafka is unreachable; the listener runs anyway and answers C-STORE with 0xA700 "
                "(sender may retry) until Kafka is back",
                extra={"kafka_bootstrap": self._settings.kafka_bootstrap, "error": str(exc) or "timeout"},
            )
            return False
        return True

    async def _connect(self) -> EventPublisher:
        publisher = self._factory(self._settings)
        try:
            await publisher.start()
        except PublishError as exc:
            self._last_failure = time.monotonic()
            self._last_error = str(exc)
            raise KafkaUnavailableError(str(exc)) from exc
        was_down = self._last_failure is not None
        self._publisher = publisher
        self._last_failure = None
        log.log(
            logging.WARNING if was_down else logging.INFO,
            "connected to Kafka",
            extra={"kafka_bootstrap": self._settings.kafka_bootstrap},
        )
        return publisher

    async def _ensure_connected(self) -> EventPublisher:
        if self._publisher is not None:
            return self._publisher
        if self._connecting is None or self._connecting.done():
            if self._last_failure is not None and time.monotonic() - self._last_failure < _MIN_RECONNECT_INTERVAL_S:
                raise KafkaUnavailableError(f"Kafka unreachable (last attempt under a second ago): {self._last_error}")
            self._connecting = self._loop.create_task(self._connect())
        # Shield: a caller that gives up (timeout) must not cancel the shared attempt.
        return await asyncio.shield(self._connecting)

    async def _publish(self, event: DicomInstanceReceived, key: str) -> None:
        publisher = await self._ensure_connected()
        await publisher.publish(event, key)

    def start_publish(self, event: DicomInstanceReceived, key: str) -> PendingPublish:
        """Called from DIMSE threads: hand the event to the loop and return at once; the
        caller syncs its staged file meanwhile and then waits with :meth:`PendingPublish.wait`."""
        future = asyncio.run_coroutine_threadsafe(self._publish(event, key), self._loop)
        return PendingPublish(future, self._settings.dicom_scp_publish_timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the producer (flushing what it holds), then the loop and its thread."""

        async def _stop() -> None:
            if self._connecting is not None and not self._connecting.done():
                self._connecting.cancel()
            if self._publisher is not None:
                await self._publisher.stop()
                self._publisher = None

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=timeout_s)
            except Exception as exc:  # shutting down: report, then stop the loop anyway
                log.warning("Kafka producer did not stop cleanly", extra={"error": repr(exc)})
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

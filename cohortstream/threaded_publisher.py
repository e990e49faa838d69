"""Publish events from plain threads, with librdkafka: the DICOM listener's Kafka client.

Why a second client beside :class:`cohortstream.publisher.EventPublisher` (aiokafka):
pynetdicom serves each association in its own thread and the C-STORE handler must wait,
per instance, for the broker's acknowledgement (design decision 3). Reaching an asyncio
producer from there costs a hand-off to an event-loop thread and aiokafka's protocol
code in Python on every instance, all under the GIL the receiving threads need. In an
A/B run beside ``bench.dicom_ingest`` (an ad-hoc script, figures in bench/README.md) a
bare pynetdicom SCP that also waited for an aiokafka ack per instance kept 0.69x
(1 association) / 0.80x (4) of the bare SCP alone; with librdkafka (confluent-kafka),
which runs the Kafka protocol in its own C threads outside the GIL, it kept 0.81x /
0.93x. Everything else (the faust agents, the webhooks, the loaders) is asyncio and
keeps aiokafka.

The guarantees are :class:`~cohortstream.publisher.EventPublisher`'s: ``acks=all``,
idempotence, the same single-object Avro encoding (:class:`~cohortstream.codec.EventCodec`),
the same topic catalogue, the same connection security (:func:`librdkafka_config`).
:meth:`ThreadedEventPublisher.start_publish` hands an event to librdkafka and returns at
once, so the caller can fsync meanwhile; :meth:`PendingDelivery.wait` returns only once
the broker acknowledged.

Kafka down: librdkafka reconnects by itself, and queues what it is given meanwhile. A
caller must be told quickly and truthfully whether its event may be in Kafka, so while
the broker is known unreachable (at start, or after librdkafka reported all brokers
down) :meth:`~ThreadedEventPublisher.start_publish` sends nothing and raises
:class:`KafkaUnavailableError` ("certainly not sent"), probing the broker again at most
once a second, shared by all threads. An event handed over and then not acknowledged in
time raises :class:`PublishTimeoutError`: it may still be appended.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from cohortstream.codec import EventCodec
from cohortstream.events import Event
from cohortstream.kafka_security import librdkafka_config
from cohortstream.publisher import PublishError
from cohortstream.settings import Settings
from cohortstream.topics import topic_for_event

__all__ = ["KafkaUnavailableError", "PendingDelivery", "PublishTimeoutError", "ThreadedEventPublisher"]

log = logging.getLogger(__name__)

_PROBE_INTERVAL_S = 1.0
_POLL_S = 0.2


class PublishTimeoutError(PublishError):
    """Kafka did not acknowledge in time; the event may still be appended later."""


class KafkaUnavailableError(PublishError):
    """No connection to Kafka: the event was certainly not sent."""


class PendingDelivery:
    """One event handed to librdkafka; :meth:`wait` blocks (bounded) for the broker's ack.

    Also the delivery callback librdkafka calls (from the publisher's poll thread)."""

    __slots__ = ("_done", "_error", "_timeout_s", "_what", "offset", "partition")

    def __init__(self, what: str, timeout_s: float) -> None:
        self._done = threading.Event()
        self._error: KafkaError | None = None
        self._timeout_s = timeout_s
        self._what = what
        self.partition: int | None = None
        """The partition and offset the broker gave the event (set once acknowledged)."""
        self.offset: int | None = None

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        self._error = error
        if error is None:
            self.partition, self.offset = message.partition(), message.offset()
        self._done.set()

    def wait(self) -> None:
        """Return once Kafka acknowledged; raise :class:`PublishError` (or a subclass) otherwise."""
        if not self._done.wait(self._timeout_s):
            raise PublishTimeoutError(f"no acknowledgement from Kafka for {self._what} within {self._timeout_s}s")
        if self._error is not None:
            if self._error.code() == KafkaError._MSG_TIMED_OUT:
                raise PublishTimeoutError(f"Kafka did not acknowledge {self._what} in time: {self._error.str()}")
            raise PublishError(f"Kafka did not acknowledge {self._what}: {self._error.str()}")


class ThreadedEventPublisher:
    """An idempotent ``acks=all`` librdkafka producer any thread may publish with.

    ``start()`` creates the producer and its poll thread (which runs the delivery
    callbacks) and says whether the broker answered; ``stop()`` flushes and ends both.
    """

    def __init__(self, settings: Settings, timeout_s: float, codec: EventCodec | None = None) -> None:
        """``timeout_s``: how long a caller waits for an acknowledgement, and how long the
        producer keeps trying to deliver an event (its ``message.timeout.ms``)."""
        self._settings = settings
        self._codec = codec or EventCodec()
        self._timeout_s = timeout_s
        self._producer: Producer | None = None
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._reachable = threading.Event()
        self._probe_lock = threading.Lock()
        self._last_probe = 0.0
        self._last_error = ""

    def _config(self) -> dict[str, Any]:
        settings = self._settings
        return {
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": settings.kafka_client_id,
            "acks": "all",
            "enable.idempotence": True,
            # Send at once: each caller waits for its own event (librdkafka's default
            # lingers 5 ms to fill batches, which would be added to every C-STORE).
            "linger.ms": 0,
            "request.timeout.ms": int(min(settings.kafka_request_timeout_s, self._timeout_s) * 1000),
            # Give up on an event when its caller does, not minutes later.
            "message.timeout.ms": int(self._timeout_s * 1000),
            "error_cb": self._on_error,
            "logger": log,
            **librdkafka_config(settings),
        }

    # --- life cycle ----------------------------------------------------------------
    def start(self) -> bool:
        """Create the producer; ``True`` if the broker answered within the publish timeout.

        ``False`` is not fatal: the producer keeps trying, and publishing raises
        :class:`KafkaUnavailableError` until a probe reaches the broker."""
        self._producer = Producer(self._config())
        self._poller.start()
        if self._probe(self._timeout_s):
            self._reachable.set()
        self._last_probe = time.monotonic()
        if not self._reachable.is_set():
            log.warning(
                "Kafka did not answer the producer",
                extra={"kafka_bootstrap": self._settings.kafka_bootstrap, "error": self._last_error},
            )
        return self._reachable.is_set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued (at most ``timeout_s``), then stop the poll thread."""
        if self._producer is None:
            return
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("Kafka producer stopped with events not acknowledged", extra={"events": left})
        self._stopping.set()
        if self._poller.is_alive():
            self._poller.join(timeout=timeout_s)
        self._producer = None

    def _poll(self) -> None:
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(_POLL_S)

    # --- reachability ----------------------------------------------------------------
    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            if self._reachable.is_set():
                log.warning(
                    "Kafka unreachable: all brokers down (publishing fails fast until a probe reaches it)",
                    extra={"error": error.str()},
                )
            self._reachable.clear()
            self._last_error = error.str()
        elif error.fatal():
            log.error("Kafka producer failed", extra={"error": error.str()})
            self._reachable.clear()
            self._last_error = error.str()
        else:
            log.debug("Kafka producer error", extra={"error": error.str()})

    def _probe(self, timeout_s: float) -> bool:
        assert self._producer is not None
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            self._last_error = str(exc.args[0].str() if exc.args else exc)
            return False
        return True

    def _ensure_reachable(self) -> None:
        """Raise :class:`KafkaUnavailableError` unless the broker is (again) reachable."""
        if self._reachable.is_set():
            return
        # One probe at a time, at most one a second; every other caller fails at once.
        if not self._probe_lock.acquire(blocking=False):
            raise KafkaUnavailableError(f"Kafka unreachable: {self._last_error}")
        try:
            if self._reachable.is_set():  # another caller's probe just succeeded
                return
            now = time.monotonic()
            if now - self._last_probe < _PROBE_INTERVAL_S:
                raise KafkaUnavailableError(f"Kafka unreachable (last attempt under a second ago): {self._last_error}")
            self._last_probe = now
            if not self._probe(min(_PROBE_INTERVAL_S, self._timeout_s)):
                raise KafkaUnavailableError(f"Kafka unreachable: {self._last_error}")
            log.warning("Kafka reachable again", extra={"kafka_bootstrap": self._settings.kafka_bootstrap})
            self._reachable.set()
        finally:
            self._probe_lock.release()

    # --- publishing ------------------------------------------------------------------
    def start_publish(self, event: Event, key: str, topic: str | None = None) -> PendingDelivery:
        """Hand ``event`` (keyed by ``key``) to the producer and return at once; call
        :meth:`PendingDelivery.wait` for the acknowledgement. ``topic`` defaults to the
        catalogue's topic of the event type."""
        if self._producer is None:
            raise KafkaUnavailableError("publisher is not started")
        self._ensure_reachable()
        topic = topic or topic_for_event(type(event)).full_name(self._settings)
        pending = PendingDelivery(f"{type(event).__name__} on {topic}", self._timeout_s)
        try:
            self._producer.produce(
                topic, value=self._codec.encode_event(event), key=key.encode("utf-8"), on_delivery=pending
            )
        except BufferError as exc:  # the local queue is full: nothing was sent
            raise KafkaUnavailableError(f"Kafka producer queue full: {exc}") from exc
        except KafkaException as exc:
            raise KafkaUnavailableError(f"Kafka refused the event: {exc}") from exc
        return pending

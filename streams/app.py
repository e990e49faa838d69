"""Build the faust application from settings. Thin on purpose: no agents, no topics here."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.types import ConsumerT, TransportT

from cohortstream.backoff import sinks_paused
from cohortstream.kafka_security import kafka_security
from cohortstream.logs import logging_dict_config
from cohortstream.metrics import serve_metrics
from cohortstream.settings import Settings
from streams.codec import register_codec
from streams.kafka_transport import FetchBatching, Transport

__all__ = ["READY_MARKER", "CohortStreamApp", "create_app", "run_app"]

log = logging.getLogger(__name__)

_RELEASE_CHECK_S = 0.5


class CohortStreamApp(faust.App):
    """A faust app whose rebalances and shutdowns never wait on a sink paused by an outage.

    Before a rebalance or a stop, faust waits until every message an agent started is
    acknowledged (``stream_wait_empty``): right for a sink that is working, but a sink
    waiting for MongoDB or Orthanc to come back would hold the group's rebalance and the
    worker's SIGTERM for as long as the outage lasts. So while a sink of this process is
    paused, the wait *releases* the in-flight messages instead: they are marked so that
    faust forgets them *without* acknowledging them. Their offsets are never committed by
    this consumer; the partition's next owner (or this worker after a restart) reads them
    again and applies them, and the sinks are idempotent. (Letting faust skip the wait
    instead would be wrong: it acknowledges a message whose stream is closed — faust's
    ``Stream.__aiter__`` acks in a ``finally`` — and would commit it unapplied.)
    """

    fetch_batching: FetchBatching | None = None
    """What each fetch of this app's consumer may wait for (streams/kafka_transport.py)."""

    def _new_transport(self) -> TransportT:
        # Uncommitted partitions are read from their beginning after a rebalance too
        # (streams/kafka_transport.py).
        return Transport(self.conf.broker_consumer, self)

    async def _consumer_wait_empty(self, consumer: ConsumerT, logger: Any) -> None:
        if not self.conf.stream_wait_empty:
            return
        waiter = asyncio.ensure_future(consumer.wait_empty())
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=_RELEASE_CHECK_S)
                if not waiter.done() and sinks_paused():
                    _release_in_flight(consumer)
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()


def _release_in_flight(consumer: ConsumerT) -> None:
    unacked = getattr(consumer, "_unacked_messages", None)
    if not unacked:
        return
    released = [message for message in list(unacked) if not message.acked]
    for message in released:
        # acked=True without Consumer.ack(): faust stops waiting for it, and its offset is
        # not recorded as done, so no commit covers it.
        message.acked = True
    if released:
        log.warning(
            "released in-flight messages held by a paused sink; they stay uncommitted and are read again",
            extra={"messages": [f"{m.topic}[{m.partition}]@{m.offset}" for m in released]},
        )


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """faust's form of the process's Kafka security (:mod:`cohortstream.kafka_security`)."""
    security = kafka_security(settings)
    if security.protocol == "SASL_SSL":
        return faust.SASLCredentials(
            username=security.username,
            password=security.password,
            ssl_context=security.ssl_context,
            mechanism=security.sasl_mechanism,
        )
    if security.protocol == "SSL":
        return faust.SSLCredentials(security.ssl_context)
    return None


def create_app(settings: Settings, *, app_id: str | None = None, fetch_max_wait_s: float | None = None) -> faust.App:
    """A faust app wired to the configured broker, with the Avro codec registered.

    ``app_id`` overrides ``settings.app_id`` (tests use a unique one per test so
    consumer groups and changelog topics never collide); ``fetch_max_wait_s`` overrides
    ``settings.consumer_fetch_max_wait_s``.
    """
    register_codec()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = CohortStreamApp(
        app_id or settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers],
        broker_client_id=settings.kafka_client_id,
        broker_credentials=broker_credentials(settings),
        store=settings.table_store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        processing_guarantee="at_least_once",
        # No standby copies of table partitions on the other workers of a lane: a worker that
        # takes partitions over rebuilds them from the changelog (seconds for the series
        # tables). With standbys, a survivor promoted from standby was seen to complete no
        # more series after a takeover (tests/integration/test_dicom_faults.py, two workers).
        table_standby_replicas=0,
    )
    app.fetch_batching = FetchBatching(
        min_bytes=settings.consumer_fetch_min_bytes,
        max_wait_ms=round(
            (settings.consumer_fetch_max_wait_s if fetch_max_wait_s is None else fetch_max_wait_s) * 1000
        ),
    )
    return app


READY_MARKER = "cohortstream: stream app ready"
"""Printed on standard output, whatever the log level, once the app has its partitions and
its tables are recovered: the worker's supervisor and the stack's health checks wait for
it (faust's own "Ready" is an INFO log record, gone at ``COHORTSTREAM_LOG_LEVEL=WARNING``)."""


class _Worker(faust.Worker):
    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        print(READY_MARKER, flush=True)


def run_app(app: faust.App, settings: Settings, metrics_port: int) -> None:
    """Run ``app`` until SIGTERM/SIGINT (faust handles signals and a clean shutdown), with
    the process's Prometheus endpoint on ``metrics_port`` (0: none)."""
    serve_metrics(metrics_port)
    worker = _Worker(app, loglevel=settings.log_level.lower(), quiet=True, logging_config=logging_dict_config(settings))
    worker.execute_from_commandline()

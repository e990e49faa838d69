"""``cohortstream orthanc feed``: follow Orthanc's change log and publish an event for every
instance Orthanc stores, whatever route brought it.

The loop, per page of ``GET /changes?since=<checkpoint>&limit=<page size>``:

1. if the page does not start right after the checkpoint, ask Orthanc for its oldest and
   newest change (:func:`producers.orthanc.changes.find_gap`): a checkpoint that fell out
   of the retained window is an ERROR, kept in the checkpoint document and shown by
   ``/healthz`` and ``/metrics`` until ``cohortstream orthanc reconcile`` runs;
2. the page's ``NewInstance`` changes are read in bulk (:mod:`producers.orthanc.instances`)
   and become ``DicomInstanceReceived`` events (no staged file: ``orthanc_instance_id``);
   DICOM SEGs for series with an AI suggestion also become corrections in the review
   history (:mod:`producers.orthanc.corrections`). Instances the DICOM views already hold
   came through our listener (its archive agent stored them in Orthanc) and are left out
   (``orthanc_feed_skip_known``; one query per page), which only saves work: an instance
   whose listener event is not folded in yet is published again, and the sinks are
   idempotent by SOP Instance UID;
3. all of them are published at once and awaited (``acks=all``), keyed by
   SeriesInstanceUID like the listener's, so series completion sees both routes of one
   series in one partition and in order;
4. only then the checkpoint moves to the page's last change.

A restart reads on from the checkpoint: at most one page is published twice, and every
sink is idempotent by SOP Instance UID. When the page was the end of the log, the feed
waits ``orthanc_feed_poll_interval_s`` before asking again. Orthanc or MongoDB away is
backpressure (retried until back); Kafka not acknowledging stops the feed with an error
and exit status 1 (compose restarts it; locally ``deploy/stack.sh start feed``), and it
goes on from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cohortstream.backoff import retry_transient
from cohortstream.events import Event
from cohortstream.mongo import AsyncDatabase, open_database
from cohortstream.orthanc import OrthancClient
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from producers.orthanc.changes import ChangePage, find_gap, first_position, new_instances, parse_page
from producers.orthanc.checkpoint import CheckpointStore
from producers.orthanc.corrections import corrections_for
from producers.orthanc.instances import InstanceReader
from producers.orthanc.status import EVENTS, SKIPPED, FeedStatus, status_server

__all__ = ["OrthancFeed", "run_feed", "serve_feed"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: When the log answered nothing new for this long, check that it did not restart below us.
_EMPTY_CHECK_S = 5.0


class OrthancFeed:
    """One feed: Orthanc → events, checkpointed in the view store."""

    def __init__(
        self,
        settings: Settings,
        orthanc: OrthancClient,
        publisher: EventPublisher,
        db: AsyncDatabase,
        status: FeedStatus | None = None,
    ) -> None:
        self._settings = settings
        self._orthanc = orthanc
        self._publisher = publisher
        self._db = db
        self._checkpoints = CheckpointStore(db)
        self._reader = InstanceReader(orthanc)
        self.status = status or FeedStatus()

    async def _mongo(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        from pymongo.errors import ConnectionFailure

        return await retry_transient(
            operation,
            what=what,
            transient=(ConnectionFailure,),
            pause_after=self._settings.sink_retry_attempts,
            max_delay_s=self._settings.sink_retry_max_delay_s,
            other_attempts=self._settings.sink_error_attempts,
        )

    async def _newest_seq(self) -> int:
        body = await self._orthanc.retrying(self._orthanc.last_change, "read Orthanc's last change")
        return int(body.get("Last") or 0)

    async def start_position(self) -> int:
        """The checkpoint, or where a first start begins (``orthanc_feed_start``)."""
        checkpoint = await self._mongo(self._checkpoints.load, "read the feed's checkpoint")
        if checkpoint is not None:
            self.status.set_gap(checkpoint.gap)
            log.info("Orthanc change feed resumes", extra={"checkpoint_seq": checkpoint.seq})
            return checkpoint.seq
        newest = await self._newest_seq()
        position = first_position(self._settings.orthanc_feed_start, newest)
        await self._mongo(lambda: self._checkpoints.save(position), "store the feed's checkpoint")
        log.info(
            "Orthanc change feed starts without a checkpoint",
            extra={"start": self._settings.orthanc_feed_start, "checkpoint_seq": position, "orthanc_last_seq": newest},
        )
        return position

    async def check_window(self, position: int) -> int:
        """The position to read from: ``position``, or where the log resumes after a gap."""
        newest = await self._newest_seq()
        first = await self._orthanc.retrying(lambda: self._orthanc.changes(0, 1), "read Orthanc's oldest change")
        oldest_page = parse_page(first, 0)
        oldest = oldest_page.changes[0].seq if oldest_page.changes else None
        gap = find_gap(position, oldest, newest)
        if gap is None:
            return position
        log.error(
            "Orthanc change feed lost its place in Orthanc's change log: run `cohortstream orthanc reconcile`",
            extra={"after_seq": gap.after_seq, "resumed_at_seq": gap.resumed_at_seq, "reason": gap.reason},
        )
        await self._mongo(
            lambda: self._checkpoints.record_gap(gap.after_seq, gap.resumed_at_seq, gap.reason), "record the gap"
        )
        loaded = await self._mongo(self._checkpoints.load, "read the feed's checkpoint")
        self.status.set_gap(loaded.gap if loaded else None)
        if gap.resumed_at_seq < position:
            await self._mongo(lambda: self._checkpoints.reset(gap.resumed_at_seq), "move the feed's checkpoint")
        return gap.resumed_at_seq

    async def _known(self, uids: list[str]) -> set[str]:
        """The SOP Instance UIDs the DICOM views already folded in (``received_sha256``
        is written by the views agent only): their event is in the topic already."""
        cursor = self._db["instances"].find({"_id": {"$in": uids}, "received_sha256": {"$exists": True}}, {"_id": 1})
        return {str(doc["_id"]) async for doc in cursor}

    async def publish_page(self, page: ChangePage) -> int:
        """Publish the events of one page and wait for Kafka; returns how many."""
        changes = new_instances(page)
        if not changes:
            return 0
        batch = await self._reader.read(
            [c.resource_id for c in changes], {c.resource_id: (c.seq, c.date) for c in changes}
        )
        if batch.gone:
            SKIPPED.labels("deleted").inc(batch.gone)
        if batch.unreadable:
            SKIPPED.labels("unreadable").inc(batch.unreadable)
        reviews = (
            await self._mongo(lambda: corrections_for(self._db, batch.segs), "look up suggestions")
            if batch.segs
            else []
        )
        events = batch.events
        if self._settings.orthanc_feed_skip_known and events:
            known = await self._mongo(
                functools.partial(self._known, [e.sop_instance_uid for e in events]), "look up known instances"
            )
            events = [e for e in events if e.sop_instance_uid not in known]
            if known:
                SKIPPED.labels("already_in_views").inc(len(batch.events) - len(events))
        items: list[tuple[Event, str]] = [(e, e.series_instance_uid) for e in events]
        items += [(r, r.series_instance_uid) for r in reviews]
        if items:
            await self._publisher.publish_many(items)
        EVENTS.labels("DicomInstanceReceived").inc(len(events))
        if reviews:
            EVENTS.labels("AnnotationReviewed").inc(len(reviews))
        return len(items)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop`` is set."""
        position = await self.start_position()
        loop = asyncio.get_running_loop()
        last_check = last_gap_refresh = loop.time()
        size = self._settings.orthanc_feed_page_size
        while not stop.is_set():
            body = await self._orthanc.retrying(
                functools.partial(self._orthanc.changes, position, size), "read Orthanc's change log"
            )
            page = parse_page(body, position)
            if self.status.gap and loop.time() - last_gap_refresh > _EMPTY_CHECK_S:
                # A reconciliation (another process) clears the gap in the store.
                last_gap_refresh = loop.time()
                stored = await self._mongo(self._checkpoints.load, "read the feed's checkpoint")
                self.status.set_gap(stored.gap if stored else None)
            quiet_for = loop.time() - last_check
            if (page.changes and page.changes[0].seq > position + 1) or (
                not page.changes and quiet_for > _EMPTY_CHECK_S
            ):
                last_check = loop.time()
                resumed = await self.check_window(position)
                if resumed != position:
                    position = resumed
                    continue
            if not page.changes:
                self.status.moved(position, position, None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.orthanc_feed_poll_interval_s)
                continue
            published = await self.publish_page(page)
            position = page.last
            await self._mongo(functools.partial(self._checkpoints.save, position), "store the feed's checkpoint")
            newest = page.last if page.done else await self._newest_seq()
            self.status.moved(position, newest, page.changes[-1].date)
            log.debug("changes published", extra={"checkpoint_seq": position, "events": published})
            if page.done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.orthanc_feed_poll_interval_s)


async def run_feed(settings: Settings, stop: asyncio.Event, status: FeedStatus | None = None) -> None:
    """Run one feed with its own clients (and its status server when the port is set) until ``stop``."""
    status = status or FeedStatus()
    server = (
        status_server(status, settings.orthanc_feed_host, settings.orthanc_feed_port)
        if settings.orthanc_feed_port
        else None
    )
    server_task = asyncio.create_task(server.serve()) if server else None
    try:
        async with (
            open_database(settings) as db,
            OrthancClient(settings) as orthanc,
            EventPublisher(settings) as publisher,
        ):
            await OrthancFeed(settings, orthanc, publisher, db, status).run(stop)
    finally:
        status.running = False
        if server is not None and server_task is not None:
            server.should_exit = True
            await server_task


def serve_feed(settings: Settings) -> int:
    """``cohortstream orthanc feed``: run until SIGTERM/SIGINT; the exit status."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "Orthanc change feed starting",
            extra={"orthanc_url": settings.orthanc_url, "page_size": settings.orthanc_feed_page_size},
        )
        await run_feed(settings, stop)
        log.info("Orthanc change feed stopped")

    asyncio.run(main())
    return 0

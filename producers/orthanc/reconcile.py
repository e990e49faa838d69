"""``cohortstream orthanc reconcile``: publish every instance Orthanc holds that the views lack.

The remedy for a gap in the change feed (its checkpoint fell out of Orthanc's bounded
change log, or the log was cleared or restarted) and for an archive that held data
before the feed ran with ``orthanc_feed_start=now``. It pages through every instance id
Orthanc holds (``/instances?since=&limit=``), reads each page in bulk like the feed, asks
the ``instances`` view which SOP Instance UIDs it already has, and publishes events for
the others (``orthanc_change_seq`` null). Safe to run at any time and more than once,
also while the feed runs: an instance published twice changes nothing. When it finished
a full pass it clears the feed's gap.

``--study`` limits the pass to the instances of the given studies (after a known
incident, or to check one study).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cohortstream.events import Event
from cohortstream.mongo import open_database
from cohortstream.orthanc import OrthancClient
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from producers.orthanc.checkpoint import CheckpointStore
from producers.orthanc.corrections import corrections_for
from producers.orthanc.instances import InstanceReader

__all__ = ["ReconcileReport", "reconcile"]

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one pass found and did."""

    in_orthanc: int = 0
    already_in_views: int = 0
    published: int = 0
    reviews: int = 0
    left_out: int = 0
    dry_run: bool = False
    missing_uids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would publish" if self.dry_run else "published"
        return (
            f"{self.in_orthanc} instances in Orthanc, {self.already_in_views} already in the views, "
            f"{verb} {self.published} ({self.reviews} SEG corrections), {self.left_out} left out (deleted or unreadable)"
        )


async def _ids_to_check(orthanc: OrthancClient, studies: Sequence[str], page_size: int) -> list[list[str]]:
    if studies:
        pages: list[list[str]] = []
        for uid in studies:
            found = await orthanc.retrying(
                functools.partial(orthanc.find, "Instance", {"StudyInstanceUID": uid}), "find a study's instances"
            )
            ids = [str(i) for i in found]
            pages.extend(ids[i : i + page_size] for i in range(0, len(ids), page_size))
        return pages
    pages = []
    since = 0
    while True:
        ids = await orthanc.retrying(
            functools.partial(orthanc.instance_ids, since, page_size), "list Orthanc's instances"
        )
        if not ids:
            return pages
        pages.append(ids)
        since += len(ids)


async def reconcile(
    settings: Settings, *, studies: Sequence[str] = (), dry_run: bool = False, page_size: int = 1000
) -> ReconcileReport:
    """One reconciliation pass (see the module docstring)."""
    report = ReconcileReport(dry_run=dry_run)
    async with open_database(settings) as db, OrthancClient(settings) as orthanc:
        reader = InstanceReader(orthanc)
        publisher = EventPublisher(settings)
        if not dry_run:
            await publisher.start()
        try:
            for ids in await _ids_to_check(orthanc, studies, page_size):
                batch = await reader.read(ids)
                report.in_orthanc += len(ids)
                report.left_out += batch.gone + batch.unreadable
                uids = [e.sop_instance_uid for e in batch.events]
                known = {
                    str(d["_id"])
                    async for d in db["instances"].find(
                        {"_id": {"$in": uids}, "received_sha256": {"$exists": True}}, {"_id": 1}
                    )
                }
                report.already_in_views += len(known)
                missing = [e for e in batch.events if e.sop_instance_uid not in known]
                segs = [(e, tags) for e, tags in batch.segs if e.sop_instance_uid not in known]
                reviews = await corrections_for(db, segs) if segs else []
                report.published += len(missing)
                report.reviews += len(reviews)
                report.missing_uids += [e.sop_instance_uid for e in missing]
                items: list[tuple[Event, str]] = [(e, e.series_instance_uid) for e in missing]
                items += [(r, r.series_instance_uid) for r in reviews]
                if items and not dry_run:
                    await publisher.publish_many(items)
        finally:
            await publisher.stop()
        if not dry_run and not studies:
            await CheckpointStore(db).clear_gap()
    log.info(
        "reconciliation done",
        extra={
            "in_orthanc": report.in_orthanc,
            "already_in_views": report.already_in_views,
            "published": report.published,
            "dry_run": dry_run,
        },
    )
    return report

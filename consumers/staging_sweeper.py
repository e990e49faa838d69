"""Find staged files the stream did not finish with, and finish them.

A staged file normally disappears once the archive agent has Orthanc's confirmation. One
that stays (its event was dead-lettered, the worker was down for long, a publish failed
after staging) is an orphan. The sweeper reports every orphan older than a minimum age
and, unless asked only to report, resolves it: already in Orthanc → the file is removed;
not in Orthanc → its event is published again, and the normal path stores it (every sink
is idempotent, so a second event for an instance that was only slow does no harm).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cohortstream.dicom_attributes import UnreadableInstanceError, instance_event, read_instance_attributes
from cohortstream.orthanc import OrthancClient
from cohortstream.orthanc_ids import orthanc_ids
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings
from cohortstream.staging import StagingStore

__all__ = ["SweepReport", "sweep_staging"]

PRODUCER = "staging-sweeper"
log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What a sweep found and did."""

    scanned: int = 0
    too_young: int = 0
    removed_already_archived: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        return (
            f"scanned {self.scanned} staged file(s): {self.too_young} younger than the minimum age, "
            f"{len(self.removed_already_archived)} already in Orthanc (removed), "
            f"{len(self.republished)} republished, {len(self.unreadable)} unreadable (kept)"
        )


async def sweep_staging(
    settings: Settings,
    *,
    min_age_s: float,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> SweepReport:
    """Sweep ``settings.staging_dir`` once; see the module docstring.

    ``on_progress(done, total)`` is called after each staged file (the CLI's progress bar).
    """
    report = SweepReport()
    store = StagingStore(settings.staging_dir)
    archive = OrthancClient(settings)
    await archive.setup()
    publisher = None if dry_run else EventPublisher(settings)
    if publisher is not None:
        await publisher.start()
    try:
        now = time.time()
        staged_files = list(store.iter_staged())
        for done, staged in enumerate(staged_files, start=1):
            if on_progress is not None and done > 1:
                on_progress(done - 1, len(staged_files))
            report.scanned += 1
            mtime = staged.path.stat().st_mtime
            if now - mtime < min_age_s:
                report.too_young += 1
                continue
            try:
                attrs = read_instance_attributes(staged.path)
            except UnreadableInstanceError as exc:
                log.error("unreadable staged file kept", extra={"sha256": staged.sha256, "reason": str(exc)})
                report.unreadable.append(staged.sha256)
                continue
            sop_instance_uid = attrs["sop_instance_uid"]
            ids = orthanc_ids(
                attrs["patient_id"], attrs["study_instance_uid"], attrs["series_instance_uid"], sop_instance_uid
            )
            if await archive.has_instance(ids.instance):
                report.removed_already_archived.append(sop_instance_uid)
                if not dry_run:
                    store.remove(staged.sha256)
                continue
            report.republished.append(sop_instance_uid)
            log.warning("orphan staged instance", extra={"sop_instance_uid": sop_instance_uid, "dry_run": dry_run})
            if publisher is not None:
                event = instance_event(
                    attrs,
                    staged,
                    producer=PRODUCER,
                    calling_aet=PRODUCER,
                    called_aet=settings.dicom_scp_aet,
                    received_at=datetime.fromtimestamp(mtime, UTC),
                )
                await publisher.publish(event, key=event.series_instance_uid)
        if on_progress is not None:
            on_progress(len(staged_files), len(staged_files))
    finally:
        await archive.close()
        if publisher is not None:
            await publisher.stop()
    return report

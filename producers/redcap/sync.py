"""Full sync: publish every (record, event, instrument, repeat instance) of a project.

The Data Entry Trigger does not fire on API or CSV imports, and REDCap does not retry a
trigger we answered with an error, so this is how the stream catches up: run it once when
a project is added, after an outage and on a schedule. It lists the record ids first
(``fields[0]=<record id field>``), then pulls the records in batches so one API call stays
small on large projects.

Running it twice changes nothing in the views: the events carry the same values and the
sinks upsert on project/record/event/instrument/instance (design decision 4). The
events differ only in ``event_id`` and ``emitted_at``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cohortstream.publisher import EventPublisher
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.api import RedcapApiClient
from producers.redcap.errors import RedcapError
from producers.redcap.records import event_key, record_events
from producers.redcap.trigger import normalize_redcap_url

__all__ = ["SyncReport", "run_sync", "select_project", "sync_project"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    """What a full sync did."""

    project_id: str
    redcap_url: str
    records: int
    events: int

    def summary(self) -> str:
        """One line for people."""
        return f"project {self.project_id} of {self.redcap_url}: {self.records} records, {self.events} events published"


def select_project(projects: Sequence[RedcapProject], project_id: str, redcap_url: str | None = None) -> RedcapProject:
    """The configured project with this id (and server, needed when two servers share ids)."""
    matches = [
        p
        for p in projects
        if p.project_id == project_id
        and (redcap_url is None or normalize_redcap_url(p.redcap_url) == normalize_redcap_url(redcap_url))
    ]
    if not matches:
        where = f" of {redcap_url}" if redcap_url else ""
        raise RedcapError(f"REDCap project {project_id}{where} is not in COHORTSTREAM_REDCAP_PROJECTS")
    if len(matches) > 1:
        raise RedcapError(f"REDCap project {project_id} is configured for several servers; pass --redcap-url")
    return matches[0]


async def sync_project(
    settings: Settings,
    project: RedcapProject,
    publisher: EventPublisher,
    client: RedcapApiClient,
    *,
    batch_size: int = 100,
) -> SyncReport:
    """Pull every record of ``project`` and publish its events with trigger FULL_SYNC.

    ``publisher`` must be started. An API or Kafka error stops the sync and propagates:
    what was published stays published, and running the sync again is safe.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    dictionary = await client.data_dictionary()
    record_ids = await client.export_record_ids(dictionary.record_id_field)
    published = 0
    for start in range(0, len(record_ids), batch_size):
        batch = record_ids[start : start + batch_size]
        rows = await client.export_records(records=batch)
        events = record_events(project, dictionary, rows)
        for event in events:
            await publisher.publish(event, key=event_key(event))
        published += len(events)
        log.info(
            "REDCap sync batch published",
            extra={
                "redcap_project_id": project.project_id,
                "records": len(batch),
                "events": len(events),
                "done": start + len(batch),
                "total": len(record_ids),
            },
        )
    return SyncReport(project.project_id, project.redcap_url, len(record_ids), published)


async def run_sync(
    settings: Settings, project_id: str, redcap_url: str | None = None, batch_size: int = 100
) -> SyncReport:
    """The ``cohortstream redcap sync`` command: own publisher and API client."""
    project = select_project(settings.redcap_projects, project_id, redcap_url)
    async with EventPublisher(settings) as publisher, RedcapApiClient(settings, project) as client:
        return await sync_project(settings, project, publisher, client, batch_size=batch_size)

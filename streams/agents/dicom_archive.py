"""Agent: store every received instance in Orthanc, then free its staged file.

Per message: Orthanc holds the instance (stored now or already) → the instance view
notes it → the staged file is removed (in a thread: an unlink can wait for the
filesystem's journal). A crash anywhere in between replays the message,
and each step is idempotent. Orthanc down: the agent waits (backpressure, no commit);
Orthanc refuses the object or the staged file is gone and Orthanc lacks it: dead letter.

``archive_concurrency`` actors share the partitions' stream, so that many uploads are in
flight at once (Orthanc stores several instances in parallel; one at a time, the archive
fell behind any sender with more than one association). Each actor acknowledges its own
message when done; faust commits an offset only when every message before it is
acknowledged, so a crash still replays everything that was not stored. The order in
which instances reach Orthanc does not matter: every step is per instance. The actors'
"archived" marks in the views go out together (:class:`streams.group_commit.GroupCommit`:
one write for whatever the actors finished meanwhile), and each actor acknowledges only
after the write that carried its mark.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from cohortstream.codec import EventCodec
from cohortstream.events import DicomInstanceReceived, FailureStage
from cohortstream.orthanc import OrthancRejectedError
from cohortstream.settings import Settings
from consumers.dicom_views import DicomViews
from consumers.orthanc_archive import OrthancArchive, StagedFileError, staged_path
from streams.dead_letter import DeadLetterSender, decoded_events
from streams.group_commit import GroupCommit
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "register"]

AGENT_NAME = "dicom-archive"
log = logging.getLogger(__name__)


class _SharedSinks:
    """The sinks every actor of the agent shares: connected by the first actor that
    starts, closed by the last one that stops."""

    def __init__(self, archive: OrthancArchive, views: DicomViews) -> None:
        self.archive, self.views = archive, views
        self._users = 0
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> _SharedSinks:
        async with self._lock:
            if self._users == 0:
                await self.archive.setup()
                await self.views.setup()
            self._users += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._lock:
            self._users -= 1
            if self._users == 0:
                await self.archive.close()
                await self.views.close()


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the Orthanc archiving agent to ``app`` and return it."""
    codec = EventCodec()
    archive = OrthancArchive(settings)
    views = DicomViews(settings)
    sinks = _SharedSinks(archive, views)
    archived_marks: GroupCommit[DicomInstanceReceived] = GroupCommit(views.record_archived_many)

    @app.agent(raw_topics["dicom.instance-received"], name=AGENT_NAME, concurrency=settings.archive_concurrency)
    async def archive_instances(stream: faust.StreamT[bytes]) -> None:
        async with sinks:
            async for event, message in decoded_events(stream, codec, DicomInstanceReceived, dead_letters):
                try:
                    result = await archive.store(event)
                    await archived_marks.submit(event)
                except (OrthancRejectedError, StagedFileError) as exc:
                    await dead_letters.send(message, FailureStage.SINK, exc)
                    continue
                except Exception as exc:
                    # A failure nobody classified (transient ones are retried inside the
                    # sinks): dead-letter this message rather than let the agent crash
                    # and silently stop the partition.
                    log.exception(
                        "unexpected failure archiving an instance", extra={"sop_instance_uid": event.sop_instance_uid}
                    )
                    await dead_letters.send(message, FailureStage.OTHER, exc)
                    continue
                if event.staged_uri is not None:  # None: from Orthanc's change feed, nothing staged
                    # Off the event loop: on a disk busy with the listener's fsyncs an unlink
                    # waits for the filesystem's journal (about 1 ms in the ingest benchmark,
                    # 12% of this lane's time), and meanwhile no other actor could upload.
                    await asyncio.to_thread(staged_path(event.staged_uri).unlink, missing_ok=True)
                log.info(
                    "instance archived",
                    extra={
                        "sop_instance_uid": event.sop_instance_uid,
                        "study_instance_uid": event.study_instance_uid,
                        "orthanc_id": result.ids.instance,
                        "status": result.status,
                    },
                )

    return archive_instances

"""Agent: store every received instance in Orthanc, then free its staged file.

Per message: Orthanc holds the instance (stored now or already) → the instance view
notes it → the staged file is removed. A crash anywhere in between replays the message,
and each step is idempotent. Orthanc down: the agent waits (backpressure, no commit);
Orthanc refuses the object or the staged file is gone and Orthanc lacks it: dead letter.
"""

from __future__ import annotations

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
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "register"]

AGENT_NAME = "dicom-archive"
log = logging.getLogger(__name__)


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the Orthanc archiving agent to ``app`` and return it."""
    codec = EventCodec()
    archive = OrthancArchive(settings)
    views = DicomViews(settings)

    @app.agent(raw_topics["dicom.instance-received"], name=AGENT_NAME)
    async def archive_instances(stream: faust.StreamT[bytes]) -> None:
        await archive.setup()
        await views.setup()
        try:
            async for event, message in decoded_events(stream, codec, DicomInstanceReceived, dead_letters):
                try:
                    result = await archive.store(event)
                    await views.record_archived(event)
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
                staged_path(event.staged_uri).unlink(missing_ok=True)
                log.info(
                    "instance archived",
                    extra={
                        "sop_instance_uid": event.sop_instance_uid,
                        "study_instance_uid": event.study_instance_uid,
                        "orthanc_id": result.ids.instance,
                        "status": result.status,
                    },
                )
        finally:
            await archive.close()
            await views.close()

    return archive_instances

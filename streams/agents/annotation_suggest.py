"""Agents of the annotation worker: a completed series (or a manual request) becomes a
model's suggestion, stored as a DICOM SEG in Orthanc and published as
``AnnotationSuggested``.

They run in their own faust app and consumer group (``cohortstream annotate worker``,
see :mod:`streams.annotator`) so the worker can live on a GPU machine and scale apart
from the view builders. Inference runs in a separate process; the agent awaits it without
blocking the event loop, so the consumer keeps heartbeating during a long series. A
series that cannot be segmented (bad geometry, unreadable data, out of memory) is
dead-lettered with the reason and the agent goes on; a series no model applies to is
skipped with a logged reason. Orthanc being down is backpressure (the archive retries).
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import faust
from faust.types import Message

from cohortstream.codec import EventCodec
from cohortstream.events import AnnotationRequested, DicomSeriesCompleted, FailureStage
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.orthanc import OrthancClient, OrthancRejectedError, SeriesIncompleteError
from cohortstream.settings import Settings
from consumers.annotation.applicability import SeriesFacts
from consumers.annotation.errors import AnnotationError
from consumers.annotation.worker import process_pool, suggest_series
from streams.dead_letter import DeadLetterSender, decoded_events
from streams.topics import StreamTopics

__all__ = ["COMPLETED_AGENT", "REQUEST_AGENT", "register"]

log = logging.getLogger(__name__)

COMPLETED_AGENT = "annotation-on-series-completed"
REQUEST_AGENT = "annotation-on-request"


class SeriesUnknownError(AnnotationError):
    """A manual request names a series the views do not know."""


class _Annotator:
    """What both agents share: Orthanc, the inference process and the output topic."""

    def __init__(self, settings: Settings, typed_topics: StreamTopics, dead_letters: DeadLetterSender) -> None:
        self.settings = settings
        self.archive = OrthancClient(settings)
        self.suggested = typed_topics["annotation.suggested"]
        self.dead_letters = dead_letters
        self.pool: ProcessPoolExecutor | None = None
        self.users = 0

    async def setup(self) -> None:
        if self.users == 0:
            await self.archive.setup()
            self.pool = process_pool()
        self.users += 1

    async def close(self) -> None:
        self.users -= 1
        if self.users == 0:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
                self.pool = None
            await self.archive.close()

    async def suggest(
        self,
        message: Message,
        *,
        study: str,
        series: str,
        patient_id: str,
        revision: int,
        expected: int,
        facts: SeriesFacts | None,
        model_name: str | None = None,
        request_id: uuid.UUID | None = None,
    ) -> None:
        try:
            result = await suggest_series(
                self.settings,
                self.archive,
                study_instance_uid=study,
                series_instance_uid=series,
                patient_id=patient_id,
                facts=facts,
                revision=revision,
                expected_instances=expected,
                model_name=model_name,
                request_id=request_id,
                pool=self.pool,
            )
        except (AnnotationError, OrthancRejectedError, SeriesIncompleteError) as exc:
            log.warning("series not segmented", extra={"series_instance_uid": series, "reason": str(exc)})
            await self.dead_letters.send(message, FailureStage.SINK, exc)
            return
        except BrokenProcessPool as exc:
            # The inference process died (killed for memory, crashed): a new one for the next.
            log.error("inference process died", extra={"series_instance_uid": series})
            self.pool = process_pool()
            await self.dead_letters.send(message, FailureStage.OTHER, exc)
            return
        except Exception as exc:  # e.g. torch.OutOfMemoryError raised in the worker process
            log.exception("inference failed", extra={"series_instance_uid": series})
            await self.dead_letters.send(message, FailureStage.OTHER, exc)
            return
        if result.event is not None:
            pending = await self.suggested.send(key=series.encode("utf-8"), value=result.event)
            await pending


def register(
    app: faust.App, raw_topics: StreamTopics, typed_topics: StreamTopics, settings: Settings
) -> tuple[Any, Any]:
    """Attach both agents (series completed, manual request) to ``app``."""
    codec = EventCodec()
    completed_letters = DeadLetterSender(typed_topics["dead-letter"], producer=COMPLETED_AGENT)
    request_letters = DeadLetterSender(typed_topics["dead-letter"], producer=REQUEST_AGENT)
    on_completed = _Annotator(settings, typed_topics, completed_letters)
    on_request = _Annotator(settings, typed_topics, request_letters)

    @app.agent(raw_topics["dicom.series-completed"], name=COMPLETED_AGENT)
    async def suggest_completed(stream: faust.StreamT[bytes]) -> None:
        await on_completed.setup()
        client = mongo_client(settings)
        series_view = mongo_database(client, settings)["series"]
        try:
            async for event, message in decoded_events(stream, codec, DicomSeriesCompleted, completed_letters):
                # Body part and description from the views; a series the views do not hold
                # yet is looked up in Orthanc's series record instead (suggest_series).
                doc = await series_view.find_one(
                    {"_id": event.series_instance_uid},
                    {"modality": 1, "body_part_examined": 1, "series_description": 1},
                )
                await on_completed.suggest(
                    message,
                    study=event.study_instance_uid,
                    series=event.series_instance_uid,
                    patient_id=event.patient_id,
                    revision=event.revision,
                    expected=event.instance_count,
                    facts=SeriesFacts.from_view(doc, modality=event.modality) if doc is not None else None,
                )
        finally:
            await client.close()
            await on_completed.close()

    @app.agent(raw_topics["annotation.requested"], name=REQUEST_AGENT)
    async def suggest_requested(stream: faust.StreamT[bytes]) -> None:
        await on_request.setup()
        client = mongo_client(settings)
        series_view = mongo_database(client, settings)["series"]
        try:
            async for event, message in decoded_events(stream, codec, AnnotationRequested, request_letters):
                doc = await series_view.find_one(
                    {"_id": event.series_instance_uid},
                    {
                        "patient_id": 1,
                        "instance_count": 1,
                        "modality": 1,
                        "body_part_examined": 1,
                        "series_description": 1,
                    },
                )
                if doc is None:
                    await request_letters.send(
                        message,
                        FailureStage.VALIDATE,
                        SeriesUnknownError(
                            f"series {event.series_instance_uid} is not in the views (not received yet?)"
                        ),
                    )
                    continue
                await on_request.suggest(
                    message,
                    study=event.study_instance_uid,
                    series=event.series_instance_uid,
                    patient_id=str(doc["patient_id"]),
                    revision=event.series_revision,
                    expected=int(doc.get("instance_count") or 0),
                    facts=SeriesFacts.from_view(doc),
                    model_name=event.model_name,
                    request_id=event.request_id,
                )
        finally:
            await client.close()
            await on_request.close()

    return suggest_completed, suggest_requested

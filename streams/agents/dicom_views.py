"""Agent: fold received instances into the MongoDB views, in batches.

Batches (up to 200 events or 1 s) turn per-instance round trips into a few bulk writes
and one count refresh per touched series/study/patient; offsets are acknowledged only
after the whole batch is applied.
"""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.codec import EventCodec
from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings
from consumers.dicom_views import DicomViews
from streams.dead_letter import DeadLetterSender, decode_or_dead_letter
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "BATCH_SIZE", "BATCH_WITHIN_S", "register"]

AGENT_NAME = "dicom-views"
BATCH_SIZE = 200
BATCH_WITHIN_S = 1.0


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the view-building agent to ``app`` and return it."""
    codec = EventCodec()
    views = DicomViews(settings)

    @app.agent(raw_topics["dicom.instance-received"], name=AGENT_NAME)
    async def build_views(stream: faust.StreamT[bytes]) -> None:
        await views.setup()
        try:
            batch: list[DicomInstanceReceived] = []
            async for items in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
                batch.clear()
                for item in items:
                    event = await decode_or_dead_letter(item, codec, DicomInstanceReceived, dead_letters)
                    if event is not None:
                        batch.append(event)
                await views.apply(batch)
        finally:
            await views.close()

    return build_views

"""Agent: fold received instances into the MongoDB views, in batches.

Batches turn per-instance round trips into a few bulk writes and one count refresh per
batch; offsets are acknowledged only after the whole batch is applied (see
:mod:`streams.batches`). A batch is up to 200 events, or what arrived within
``dicom_views_batch_wait_s`` (0.2 s): under a backlog the buffer fills at once and batches
are full, when the stream is quiet an event waits at most that long. It was 1 s, the
largest part of the views' lag when Orthanc receives at full speed (a batch of 200 took
0.8 s to fill at 250 inst/s).
"""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.events import DicomInstanceReceived
from cohortstream.settings import Settings
from consumers.dicom_views import DicomViews
from streams.batches import register_view_agent
from streams.dead_letter import DeadLetterSender
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "BATCH_SIZE", "register"]

AGENT_NAME = "dicom-views"
BATCH_SIZE = 200


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the agent to ``app`` and return it."""
    return register_view_agent(
        app,
        raw_topics["dicom.instance-received"],
        name=AGENT_NAME,
        expected=DicomInstanceReceived,
        sink=DicomViews(settings),
        dead_letters=dead_letters,
        size=BATCH_SIZE,
        within_s=settings.dicom_views_batch_wait_s,
    )

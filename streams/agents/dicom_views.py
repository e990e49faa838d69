"""Agent: fold received instances into the MongoDB views, in batches.

Batches turn per-instance round trips into a few bulk writes and one count refresh per
batch; offsets are acknowledged only after the whole batch is applied (see
:mod:`streams.batches`). A batch is up to :data:`BATCH_SIZE` events, or what arrived within
``dicom_views_batch_wait_s`` (0.2 s): under a backlog the buffer fills at once and batches
grow, when the stream is quiet an event waits at most that long. It was 200 events or 1 s:
the wait was the largest part of the views' lag when Orthanc receives at full speed (a
batch of 200 took 0.8 s to fill at 250 inst/s), and the size kept the agent behind once
the cores were busy.
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
BATCH_SIZE = 1000
"""Most events in one batch. A batch costs a chain of round trips whatever its size (measured
with the MongoDB-wire server on loaded cores: 80 ms for 200 events, 173 ms for 1,000), so
under a backlog a larger batch catches up where batches of 200 fell further behind (at 360
inst/s with 0.5 s of round trips a batch, 200 a batch is less than arrives meanwhile)."""


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

"""Agent: fold EHR records into the timeline and subject summaries, in batches."""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.events import EhrRecord
from cohortstream.settings import Settings
from consumers.ehr_views import EhrViews
from streams.batches import register_view_agent
from streams.dead_letter import DeadLetterSender
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "BATCH_SIZE", "register"]

AGENT_NAME = "ehr-views"
BATCH_SIZE = 500


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the agent to ``app`` and return it."""
    return register_view_agent(
        app,
        raw_topics["ehr.record"],
        name=AGENT_NAME,
        expected=EhrRecord,
        sink=EhrViews(settings),
        dead_letters=dead_letters,
        size=BATCH_SIZE,
    )

"""Agent: fold REDCap record changes into the questionnaire views and the subject links."""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.events import RedcapRecordChanged
from cohortstream.settings import Settings
from consumers.redcap_views import RedcapViews
from streams.batches import register_view_agent
from streams.dead_letter import DeadLetterSender
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "BATCH_SIZE", "register"]

AGENT_NAME = "redcap-views"
BATCH_SIZE = 100


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the agent to ``app`` and return it."""
    return register_view_agent(
        app,
        raw_topics["redcap.record-changed"],
        name=AGENT_NAME,
        expected=RedcapRecordChanged,
        sink=RedcapViews(settings),
        dead_letters=dead_letters,
        size=BATCH_SIZE,
    )

"""Agent: keep every audit event in the append-only ``audit_trail`` collection, in batches."""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.events import AccessAudited
from cohortstream.settings import Settings
from consumers.audit_trail import AuditTrail
from streams.batches import register_view_agent
from streams.dead_letter import DeadLetterSender
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "BATCH_SIZE", "register"]

AGENT_NAME = "audit-trail"
BATCH_SIZE = 500


def register(app: faust.App, raw_topics: StreamTopics, dead_letters: DeadLetterSender, settings: Settings) -> Any:
    """Attach the agent to ``app`` and return it."""
    return register_view_agent(
        app,
        raw_topics["audit.access"],
        name=AGENT_NAME,
        expected=AccessAudited,
        sink=AuditTrail(settings),
        dead_letters=dead_letters,
        size=BATCH_SIZE,
    )

"""Agents: fold annotation suggestions and reviews into the ``annotations`` view."""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.events import AnnotationReviewed, AnnotationSuggested
from cohortstream.settings import Settings
from consumers.annotation_views import ReviewViews, SuggestionViews
from streams.batches import register_view_agent
from streams.dead_letter import DeadLetterSender
from streams.topics import StreamTopics

__all__ = ["REVIEW_AGENT", "SUGGESTION_AGENT", "register"]

SUGGESTION_AGENT = "annotation-suggestion-views"
REVIEW_AGENT = "annotation-review-views"


def register(
    app: faust.App, raw_topics: StreamTopics, dead_letters: dict[str, DeadLetterSender], settings: Settings
) -> tuple[Any, Any]:
    """Attach both agents to ``app`` (``dead_letters`` by agent name)."""
    suggestions = register_view_agent(
        app,
        raw_topics["annotation.suggested"],
        name=SUGGESTION_AGENT,
        expected=AnnotationSuggested,
        sink=SuggestionViews(settings),
        dead_letters=dead_letters[SUGGESTION_AGENT],
        size=100,
    )
    reviews = register_view_agent(
        app,
        raw_topics["annotation.reviewed"],
        name=REVIEW_AGENT,
        expected=AnnotationReviewed,
        sink=ReviewViews(settings),
        dead_letters=dead_letters[REVIEW_AGENT],
        size=100,
    )
    return suggestions, reviews

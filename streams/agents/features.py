"""Agents of the ``features`` lane: every event that touches a subject (EHR rows, REDCap
records, DICOM instances, annotation suggestions and reviews) is folded into the feature
inputs; one shared sink debounces and writes the subjects' feature documents
(``consumers/features/views.py``, ``docs/features.md``)."""

from __future__ import annotations

from typing import Any

import faust

from cohortstream.events import (
    AnnotationReviewed,
    AnnotationSuggested,
    DicomInstanceReceived,
    EhrRecord,
    Event,
    RedcapRecordChanged,
)
from cohortstream.settings import Settings
from consumers.features.views import FeatureViews
from streams.batches import register_view_agent
from streams.dead_letter import DeadLetterSender
from streams.topics import StreamTopics

__all__ = ["AGENTS", "register"]

AGENTS: dict[str, tuple[str, type[Event]]] = {
    "features-ehr": ("ehr.record", EhrRecord),
    "features-redcap": ("redcap.record-changed", RedcapRecordChanged),
    "features-dicom": ("dicom.instance-received", DicomInstanceReceived),
    "features-suggestions": ("annotation.suggested", AnnotationSuggested),
    "features-reviews": ("annotation.reviewed", AnnotationReviewed),
}
"""Agent name → (the topic it reads, the event it expects)."""

BATCH_SIZE = 1000


def register(
    app: faust.App,
    raw_topics: StreamTopics,
    dead_letters: dict[str, DeadLetterSender],
    settings: Settings,
    names: list[str] | None = None,
) -> list[Any]:
    """Attach the named agents (all when None) to ``app``, all with one :class:`FeatureViews`."""
    sink = FeatureViews(settings)
    agents = []
    for name, (topic, expected) in AGENTS.items():
        if names is not None and name not in names:
            continue
        agents.append(
            register_view_agent(
                app,
                raw_topics[topic],
                name=name,
                expected=expected,
                sink=sink,
                dead_letters=dead_letters[name],
                size=BATCH_SIZE,
                # Short: the batch's wait adds to the delay from an event to its vector.
                within_s=min(0.5, settings.features_delay_s / 4),
            )
        )
    return agents

"""The topic catalogue: which event travels on which topic, and what keys it.

Producers (which do not run faust) and the faust app both take topic names from here, so
a topic is named once. Names get ``Settings.topic_prefix`` in front.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohortstream.events import (
    AccessAudited,
    AnnotationRequested,
    AnnotationReviewed,
    AnnotationSuggested,
    DeadLetter,
    DicomInstanceReceived,
    DicomSeriesCompleted,
    EhrRecord,
    Event,
    RedcapRecordChanged,
)
from cohortstream.settings import Settings

__all__ = [
    "COMPACTED_TOPICS",
    "COMPACTED_TOPIC_MAX_MESSAGE_BYTES",
    "FEATURE_INPUTS_TOPIC",
    "TOPICS",
    "TopicSpec",
    "topic_for_event",
]


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its logical name, the event it carries and what the key is."""

    name: str
    event: type[Event]
    key: str
    """Natural identifier used as the message key (keeps one entity's events in order)."""

    def full_name(self, settings: Settings) -> str:
        """The topic name on the broker."""
        return settings.topic(self.name)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("dicom.instance-received", DicomInstanceReceived, "series_instance_uid"),
    TopicSpec("dicom.series-completed", DicomSeriesCompleted, "series_instance_uid"),
    TopicSpec("redcap.record-changed", RedcapRecordChanged, "project_id/record_id"),
    TopicSpec("ehr.record", EhrRecord, "source/subject_id"),
    TopicSpec("annotation.requested", AnnotationRequested, "series_instance_uid"),
    TopicSpec("annotation.suggested", AnnotationSuggested, "series_instance_uid"),
    TopicSpec("annotation.reviewed", AnnotationReviewed, "series_instance_uid"),
    TopicSpec("dead-letter", DeadLetter, "original key"),
    TopicSpec("audit.access", AccessAudited, "actor_id"),
)

FEATURE_INPUTS_TOPIC = "features.inputs"
"""Not an event topic: the features lane's snapshot of each feature input document, keyed
by the document's id (``cohortstream/features/snapshot.py``); what a rebuild replays."""

COMPACTED_TOPICS: tuple[str, ...] = (FEATURE_INPUTS_TOPIC,)
"""Topics of state, not events: ``cleanup.policy=compact`` keeps the latest value of each key."""

COMPACTED_TOPIC_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A snapshot holds all of one identifier's lab rows (about 30 bytes a row): 16 MiB is half
a million rows, where the broker's default (1 MiB) would refuse a subject of 35,000."""


def topic_for_event(event_type: type[Event]) -> TopicSpec:
    """The topic that carries ``event_type``."""
    for spec in TOPICS:
        if spec.event is event_type:
            return spec
    raise KeyError(f"no topic carries {event_type.__name__}")

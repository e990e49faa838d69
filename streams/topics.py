"""faust topic objects for the catalogue in :mod:`cohortstream.topics`."""

from __future__ import annotations

import faust
from faust.types import TopicT

from cohortstream.settings import Settings
from cohortstream.topics import TOPICS
from streams.codec import CODEC_NAME

__all__ = ["StreamTopics", "define_topics"]


class StreamTopics(dict[str, TopicT]):
    """Topic objects by logical name (``"dicom.instance-received"``...)."""


def define_topics(app: faust.App, settings: Settings) -> StreamTopics:
    """Declare every catalogue topic on ``app``: raw byte keys, typed Avro event values."""
    return StreamTopics(
        {
            spec.name: app.topic(
                spec.full_name(settings),
                key_serializer="raw",
                value_serializer=CODEC_NAME,
                partitions=settings.topic_partitions,
            )
            for spec in TOPICS
        }
    )

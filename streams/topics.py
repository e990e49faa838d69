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


def define_topics(app: faust.App, settings: Settings, *, raw: bool = False) -> StreamTopics:
    """Declare every catalogue topic on ``app``.

    Keys are raw bytes. Values are typed events decoded by the Avro faust codec, or with
    ``raw=True`` the undecoded bytes, for sink agents that dead-letter what does not
    decode (see :mod:`streams.dead_letter`).
    """
    return StreamTopics(
        {
            spec.name: app.topic(
                spec.full_name(settings),
                key_serializer="raw",
                value_serializer="raw" if raw else CODEC_NAME,
                partitions=settings.topic_partitions,
            )
            for spec in TOPICS
        }
    )

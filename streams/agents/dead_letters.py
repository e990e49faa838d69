"""Agent: archive every dead letter in MongoDB and log it with its origin.

The dead-letter topic is where poison messages go (design decision 7); this agent makes
them visible to operators without anyone reading Kafka by hand.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from cohortstream.events import DeadLetter
from cohortstream.settings import Settings
from consumers.dead_letter_archive import DeadLetterArchive
from streams.topics import StreamTopics

__all__ = ["AGENT_NAME", "register"]

AGENT_NAME = "dead-letter-archive"
log = logging.getLogger(__name__)


def register(app: faust.App, topics: StreamTopics, settings: Settings, archive: DeadLetterArchive | None = None) -> Any:
    """Attach the dead-letter archiving agent to ``app`` and return it."""
    sink = archive or DeadLetterArchive(settings)

    @app.agent(topics["dead-letter"], name=AGENT_NAME)
    async def archive_dead_letters(stream: faust.StreamT[DeadLetter]) -> None:
        await sink.setup()
        try:
            async for event in stream.events():
                letter = event.value
                message = event.message
                log.warning(
                    "dead letter",
                    extra={
                        "source_topic": letter.source_topic,
                        "source_partition": letter.source_partition,
                        "source_offset": letter.source_offset,
                        "source_location": letter.source_location,
                        "stage": letter.stage.value,
                        "error_type": letter.error_type,
                        "reason": letter.reason,
                    },
                )
                await sink.archive(letter, topic=message.topic, partition=message.partition, offset=message.offset)
        finally:
            await sink.close()

    return archive_dead_letters

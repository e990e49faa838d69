"""faust agents, one module each, attached to an app by :func:`register_all`."""

from __future__ import annotations

import faust

from cohortstream.settings import Settings
from streams.agents import (
    annotation_views,
    dead_letters,
    dicom_archive,
    dicom_views,
    ehr_views,
    redcap_views,
    series_completion,
)
from streams.dead_letter import DeadLetterSender
from streams.topics import define_topics

__all__ = ["register_all"]


def register_all(app: faust.App, settings: Settings) -> None:
    """Attach every agent of the worker to ``app``.

    Sink agents read raw values and dead-letter what does not decode; the dead-letter
    archive reads typed values (a dead letter that fails to decode is only logged by
    faust: there is nowhere further to send it).
    """
    typed = define_topics(app, settings)
    raw = define_topics(app, settings, raw=True)

    def sender(agent: str) -> DeadLetterSender:
        return DeadLetterSender(typed["dead-letter"], producer=agent)

    dead_letters.register(app, typed, settings)
    dicom_archive.register(app, raw, sender(dicom_archive.AGENT_NAME), settings)
    dicom_views.register(app, raw, sender(dicom_views.AGENT_NAME), settings)
    series_completion.register(app, raw, typed, sender(series_completion.AGENT_NAME), settings)
    redcap_views.register(app, raw, sender(redcap_views.AGENT_NAME), settings)
    ehr_views.register(app, raw, sender(ehr_views.AGENT_NAME), settings)
    annotation_views.register(
        app, raw,
        {name: sender(name) for name in (annotation_views.SUGGESTION_AGENT, annotation_views.REVIEW_AGENT)},
        settings,
    )

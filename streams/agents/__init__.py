"""faust agents, one module each, attached to an app by :func:`register_all`."""

from __future__ import annotations

from collections.abc import Collection

import faust

from cohortstream.settings import Settings
from streams.agents import (
    annotation_views,
    audit_trail,
    dead_letters,
    dicom_archive,
    dicom_views,
    ehr_views,
    features,
    redcap_views,
    series_completion,
)
from streams.dead_letter import DeadLetterSender
from streams.topics import define_topics

__all__ = ["register_all"]


def register_all(app: faust.App, settings: Settings, agents: Collection[str] | None = None) -> None:
    """Attach the worker's agents named in ``agents`` (all when None) to ``app``.

    Sink agents read raw values and dead-letter what does not decode; the dead-letter
    archive reads typed values (a dead letter that fails to decode is only logged by
    faust: there is nowhere further to send it).
    """
    typed = define_topics(app, settings)
    raw = define_topics(app, settings, raw=True)

    def sender(agent: str) -> DeadLetterSender:
        return DeadLetterSender(typed["dead-letter"], producer=agent)

    def wanted(*names: str) -> bool:
        return agents is None or any(name in agents for name in names)

    if wanted(dead_letters.AGENT_NAME):
        dead_letters.register(app, typed, settings)
    if wanted(audit_trail.AGENT_NAME):
        audit_trail.register(app, raw, sender(audit_trail.AGENT_NAME), settings)
    if wanted(dicom_archive.AGENT_NAME):
        dicom_archive.register(app, raw, sender(dicom_archive.AGENT_NAME), settings)
    if wanted(dicom_views.AGENT_NAME):
        dicom_views.register(app, raw, sender(dicom_views.AGENT_NAME), settings)
    if wanted(series_completion.AGENT_NAME):
        series_completion.register(app, raw, typed, sender(series_completion.AGENT_NAME), settings)
    if wanted(redcap_views.AGENT_NAME):
        redcap_views.register(app, raw, sender(redcap_views.AGENT_NAME), settings)
    if wanted(ehr_views.AGENT_NAME):
        ehr_views.register(app, raw, sender(ehr_views.AGENT_NAME), settings)
    if wanted(annotation_views.SUGGESTION_AGENT, annotation_views.REVIEW_AGENT):
        annotation_views.register(
            app,
            raw,
            {name: sender(name) for name in (annotation_views.SUGGESTION_AGENT, annotation_views.REVIEW_AGENT)},
            settings,
        )
    wanted_features = [name for name in features.AGENTS if wanted(name)]
    if wanted_features:
        features.register(app, raw, {name: sender(name) for name in wanted_features}, settings, wanted_features)

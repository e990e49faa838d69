"""The annotation worker process: its own faust app and consumer group.

Separate from :mod:`streams.worker` so it can run where the GPU is (the same code runs
on the CPU when there is none) and be scaled or restarted without touching the views.
"""

from __future__ import annotations

import faust

from cohortstream.settings import Settings
from streams.agents import annotation_suggest
from streams.app import create_app, run_app
from streams.topics import define_topics

__all__ = ["annotator_app_id", "build_annotator_app", "run_annotator"]


def annotator_app_id(settings: Settings) -> str:
    """Consumer group of the annotation worker."""
    return f"{settings.app_id}-annotator"


def build_annotator_app(settings: Settings) -> faust.App:
    """The annotation app with its topics and agents, not yet started."""
    app = create_app(settings, app_id=annotator_app_id(settings))
    annotation_suggest.register(app, define_topics(app, settings, raw=True), define_topics(app, settings), settings)
    return app


def run_annotator(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT."""
    run_app(build_annotator_app(settings), settings, settings.annotator_metrics_port)

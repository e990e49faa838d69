"""faust agents, one module each, attached to an app by :func:`register_all`."""

from __future__ import annotations

import faust

from cohortstream.settings import Settings
from streams.agents import dead_letters
from streams.topics import StreamTopics

__all__ = ["register_all"]


def register_all(app: faust.App, topics: StreamTopics, settings: Settings) -> None:
    """Attach every agent of the worker to ``app``."""
    dead_letters.register(app, topics, settings)

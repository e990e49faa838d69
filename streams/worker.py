"""Run the faust worker: the app, the catalogue topics and every agent."""

from __future__ import annotations

import faust

from cohortstream.settings import Settings
from streams.agents import register_all
from streams.app import create_app, run_app

__all__ = ["build_worker_app", "run_worker"]


def build_worker_app(settings: Settings) -> faust.App:
    """The app with all topics and agents attached, not yet started."""
    app = create_app(settings)
    register_all(app, settings)
    return app


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; faust handles signals and a clean shutdown."""
    run_app(build_worker_app(settings), settings, settings.worker_metrics_port)

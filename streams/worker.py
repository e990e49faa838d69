"""Run the faust worker: the app, the catalogue topics and every agent."""

from __future__ import annotations

import faust

from cohortstream.logs import logging_dict_config
from cohortstream.metrics import serve_metrics
from cohortstream.settings import Settings
from streams.agents import register_all
from streams.app import create_app

__all__ = ["build_worker_app", "run_worker"]


def build_worker_app(settings: Settings) -> faust.App:
    """The app with all topics and agents attached, not yet started."""
    app = create_app(settings)
    register_all(app, settings)
    return app


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; faust handles signals and a clean shutdown."""
    app = build_worker_app(settings)
    serve_metrics(settings.worker_metrics_port)
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, logging_config=logging_dict_config(settings)
    )
    worker.execute_from_commandline()

"""Build and run the faust worker: every agent in one app, or one lane of them."""

from __future__ import annotations

import faust

from cohortstream.lanes import ARCHIVE_LANE, LANES, lane_app_id
from cohortstream.settings import Settings
from streams.agents import register_all
from streams.app import create_app, run_app

__all__ = ["build_lane_app", "build_worker_app", "run_lane"]


def build_worker_app(settings: Settings) -> faust.App:
    """Every agent in one app (consumer group ``app_id``), not yet started; its fetches
    wait as the archive lane's do (it runs the archive agent).

    Simple to run in tests; the deployed worker runs lanes instead (:mod:`cohortstream.lanes`)."""
    app = create_app(settings, fetch_max_wait_s=settings.archive_fetch_max_wait_s)
    register_all(app, settings)
    return app


def build_lane_app(settings: Settings, lane: str) -> faust.App:
    """The agents of one lane in their own app and consumer group, not yet started."""
    wait_s = settings.archive_fetch_max_wait_s if lane == ARCHIVE_LANE else None
    app = create_app(settings, app_id=lane_app_id(settings, lane), fetch_max_wait_s=wait_s)
    register_all(app, settings, LANES[lane])
    return app


def run_lane(settings: Settings, lane: str, metrics_port: int) -> None:
    """Run one lane until SIGTERM/SIGINT; faust handles signals and a clean shutdown."""
    run_app(build_lane_app(settings, lane), settings, metrics_port)

"""Build the faust application from settings. Thin on purpose: no agents, no topics here."""

from __future__ import annotations

import faust

from cohortstream.logs import logging_dict_config
from cohortstream.metrics import serve_metrics
from cohortstream.settings import Settings
from streams.codec import register_codec

__all__ = ["create_app", "run_app"]


def create_app(settings: Settings, *, app_id: str | None = None) -> faust.App:
    """A faust app wired to the configured broker, with the Avro codec registered.

    ``app_id`` overrides ``settings.app_id`` (tests use a unique one per test so
    consumer groups and changelog topics never collide).
    """
    register_codec()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id or settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers],
        broker_client_id=settings.kafka_client_id,
        store=settings.table_store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        processing_guarantee="at_least_once",
    )


def run_app(app: faust.App, settings: Settings, metrics_port: int) -> None:
    """Run ``app`` until SIGTERM/SIGINT (faust handles signals and a clean shutdown), with
    the process's Prometheus endpoint on ``metrics_port`` (0: none)."""
    serve_metrics(metrics_port)
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, logging_config=logging_dict_config(settings)
    )
    worker.execute_from_commandline()

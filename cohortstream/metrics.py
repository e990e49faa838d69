"""Prometheus metrics of the stream processes (worker, annotation worker).

The API reads Kafka offsets for events in/out and lag (``api/metrics.py``); what only the
processes themselves can see is measured here: how long each sink operation takes
(including its retries, which is the backpressure a scrape should show) and how often it
had to retry. A process exposes them when its ``*_metrics_port`` setting is not 0.
"""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = ["SINK_ERRORS", "SINK_LATENCY", "SINK_PAUSED", "SINK_RETRIES", "operation_label", "serve_metrics"]

SINK_LATENCY = Histogram(
    "cohortstream_sink_operation_seconds",
    "Time of one sink operation (MongoDB view write, Orthanc store), retries included.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SINK_RETRIES = Counter(
    "cohortstream_sink_retries_total", "Transient failures of a sink operation that were retried.", ["operation"]
)
SINK_ERRORS = Counter(
    "cohortstream_sink_errors_total",
    "Failures of a sink operation other than lost connectivity (after the last try its events are dead-lettered).",
    ["operation"],
)
SINK_PAUSED = Gauge(
    "cohortstream_sink_paused",
    "Sink operations waiting for their service to come back (backpressure), by operation.",
    ["operation"],
)

_IDENTIFIERS = re.compile(r"\b[\d.]{6,}\b|\b[0-9a-f]{8}-[0-9a-f-]{27}\b")


def operation_label(what: str) -> str:
    """``what`` without UIDs or ids, so the label's values stay few."""
    return _IDENTIFIERS.sub("*", what)


def serve_metrics(port: int) -> None:
    """Expose ``/metrics`` on 127.0.0.1:``port`` from a background thread (0: do nothing)."""
    if port:
        start_http_server(port, addr="127.0.0.1")

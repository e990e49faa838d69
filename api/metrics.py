"""Prometheus metrics at ``GET /metrics`` (text exposition format; researcher role).

Measured at scrape time (nothing is counted in the pipeline itself, so every API replica
reports the same numbers):

==================================================  ============================================
``cohortstream_topic_end_offset{topic}``            messages ever written to each catalogue
                                                    topic (sum of partition end offsets): "in";
                                                    ``topic="dead-letter"`` counts dead letters
``cohortstream_consumer_committed_offset{group,     how far each consumer group got (sum of
topic}``                                            committed offsets): "out"
``cohortstream_consumer_lag{group,topic}``          end minus committed offsets
``cohortstream_consumer_stalled_seconds{group,      how long a stalled group (lag above 0, committed
topic,agents}``                                     offset still) has not moved; only stalled pairs
``cohortstream_dead_letters_stored``                documents in the ``dead_letters`` collection
``cohortstream_dependency_up{dependency}``          1 when Kafka / MongoDB / Orthanc answered
``cohortstream_dependency_latency_seconds{...}``    how long that probe took
==================================================  ============================================

Measured by this process: ``cohortstream_api_request_duration_seconds{method,route,
status}``, a histogram of the API's own request latency by route template (unmatched
paths share ``route="unmatched"``, so a scanner cannot blow up the series count).

Not measured: latency of the sinks (event time to view update) — the views record no
timings; consumer lag is the proxy for it.

The endpoint needs a key (``Authorization: Bearer``, which Prometheus sends with
``authorization: {credentials: ...}`` in a scrape config): a researcher key is enough.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import RESEARCHER
from api.health import Readiness, probe_dependencies

__all__ = ["RequestMetrics", "request_histogram", "router"]

router = APIRouter(tags=["metrics"])


def request_histogram(registry: CollectorRegistry) -> Histogram:
    """The API's request latency histogram, in ``registry`` (one per application)."""
    return Histogram(
        "cohortstream_api_request_duration_seconds",
        "Latency of API requests, by route template.",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    )


class RequestMetrics:
    """ASGI middleware that times every HTTP request into :func:`request_histogram`.

    Plain ASGI (not ``BaseHTTPMiddleware``) so streamed answers are timed to their end
    and nothing is buffered.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.histogram.labels(scope.get("method", ""), template, str(status)).observe(time.perf_counter() - started)


class _Snapshot(Collector):
    """The numbers read for one scrape, as metric families."""

    def __init__(self, readiness: Readiness, dead_letters: int | None) -> None:
        self.readiness = readiness
        self.dead_letters = dead_letters

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "cohortstream_dependency_up", "1 when the dependency answered its probe.", labels=["dependency"]
        )
        latency = GaugeMetricFamily(
            "cohortstream_dependency_latency_seconds", "Duration of the dependency's probe.", labels=["dependency"]
        )
        for name, status in self.readiness.dependencies.items():
            up.add_metric([name], 1.0 if status.up else 0.0)
            latency.add_metric([name], status.latency_s)
        yield up
        yield latency
        offsets = self.readiness.offsets
        if offsets is not None:
            end = GaugeMetricFamily(
                "cohortstream_topic_end_offset",
                "Messages ever written to the topic (sum of partition end offsets).",
                labels=["topic"],
            )
            for topic, value in sorted(offsets.end.items()):
                end.add_metric([topic], value)
            committed = GaugeMetricFamily(
                "cohortstream_consumer_committed_offset",
                "Sum of the group's committed offsets on the topic.",
                labels=["group", "topic"],
            )
            lag = GaugeMetricFamily(
                "cohortstream_consumer_lag",
                "Messages on the topic the group has not committed yet.",
                labels=["group", "topic"],
            )
            for group in offsets.groups:
                for topic, value in sorted(group.committed.items()):
                    committed.add_metric([group.group, topic], value)
                for topic, value in sorted(group.lag.items()):
                    lag.add_metric([group.group, topic], value)
            stalled = GaugeMetricFamily(
                "cohortstream_consumer_stalled_seconds",
                "How long a consumer group with lag has not moved its committed offset (stalled pairs only).",
                labels=["group", "topic", "agents"],
            )
            for s in self.readiness.stalled:
                stalled.add_metric([s.group, s.topic, ",".join(s.agents)], s.stalled_for_s)
            yield end
            yield committed
            yield lag
            yield stalled
        if self.dead_letters is not None:
            stored = GaugeMetricFamily("cohortstream_dead_letters_stored", "Documents in the dead_letters collection.")
            stored.add_metric([], self.dead_letters)
            yield stored


async def _dead_letters(services: Any) -> int | None:
    if services.db is None:
        return None
    try:
        async with asyncio.timeout(services.settings.api_readiness_timeout_s):
            return int(await services.db["dead_letters"].count_documents({}))
    except Exception:
        return None


@router.get("/metrics", summary="Prometheus metrics (researcher key)", dependencies=[RESEARCHER])
async def metrics(request: Request) -> Response:
    """Text exposition of the pipeline's offsets and the API's request latencies."""
    services = request.app.state.services
    readiness, dead_letters = await asyncio.gather(probe_dependencies(services), _dead_letters(services))
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Snapshot(readiness, dead_letters))
    body = generate_latest(scrape) + generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

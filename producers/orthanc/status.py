"""The change feed's state, as ``/healthz`` and Prometheus ``/metrics`` show it.

What an operator needs to see: how far behind Orthanc the feed is (in changes and in
seconds), the last change it saw, how many events it published, what it had to leave
out, and above all whether it lost its place in Orthanc's bounded change log (a gap that
only ``cohortstream orthanc reconcile`` closes).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

__all__ = ["EVENTS", "SKIPPED", "FeedStatus", "create_status_app", "status_server"]

CHECKPOINT_SEQ = Gauge(
    "cohortstream_orthanc_feed_checkpoint_seq", "Last Orthanc change whose events Kafka acknowledged."
)
ORTHANC_LAST_SEQ = Gauge("cohortstream_orthanc_feed_orthanc_last_seq", "Newest change in Orthanc's log, as last read.")
LAG_CHANGES = Gauge("cohortstream_orthanc_feed_lag_changes", "Changes in Orthanc's log not published yet.")
LAG_SECONDS = Gauge(
    "cohortstream_orthanc_feed_lag_seconds", "Seconds since the feed was last caught up with Orthanc (0 when it is)."
)
LAST_CHANGE_TIME = Gauge(
    "cohortstream_orthanc_feed_last_change_timestamp_seconds", "Orthanc's time of the last change the feed published."
)
GAP = Gauge(
    "cohortstream_orthanc_feed_gap",
    "1 while changes the feed never read fell out of Orthanc's log (run `cohortstream orthanc reconcile`).",
)
EVENTS = Counter("cohortstream_orthanc_feed_events_total", "Events the feed published.", ["event"])
SKIPPED = Counter(
    "cohortstream_orthanc_feed_skipped_total", "Instances of NewInstance changes left out, by reason.", ["reason"]
)


@dataclass
class FeedStatus:
    """Mutable state of one running feed, shared by the loop and the HTTP endpoints."""

    checkpoint_seq: int | None = None
    orthanc_last_seq: int | None = None
    last_change_date: str | None = None
    caught_up_at: float | None = None
    gap: dict[str, Any] | None = None
    orthanc_reachable: bool = False
    running: bool = True

    def moved(self, checkpoint_seq: int, orthanc_last_seq: int, change_date: str | None) -> None:
        """After a page: where the feed and Orthanc stand."""
        from producers.orthanc.changes import parse_orthanc_time

        self.checkpoint_seq, self.orthanc_reachable = checkpoint_seq, True
        self.orthanc_last_seq = max(orthanc_last_seq, checkpoint_seq)
        if change_date:
            self.last_change_date = change_date
            moment = parse_orthanc_time(change_date)
            if moment is not None:
                LAST_CHANGE_TIME.set(moment.timestamp())
        if self.lag_changes == 0:
            self.caught_up_at = time.time()
        CHECKPOINT_SEQ.set(checkpoint_seq)
        ORTHANC_LAST_SEQ.set(self.orthanc_last_seq)
        LAG_CHANGES.set(self.lag_changes)
        LAG_SECONDS.set(self.lag_seconds)

    def set_gap(self, gap: dict[str, Any] | None) -> None:
        self.gap = gap
        GAP.set(1 if gap else 0)

    @property
    def lag_changes(self) -> int:
        if self.checkpoint_seq is None or self.orthanc_last_seq is None:
            return 0
        return max(0, self.orthanc_last_seq - self.checkpoint_seq)

    @property
    def lag_seconds(self) -> float:
        if self.lag_changes == 0 or self.caught_up_at is None:
            return 0.0
        return round(time.time() - self.caught_up_at, 3)

    def as_json(self) -> dict[str, Any]:
        if not self.running:
            status = "stopped"
        elif self.checkpoint_seq is None or not self.orthanc_reachable:
            status = "starting"
        else:
            status = "degraded" if self.gap else "ok"
        gap = None
        if self.gap:
            gap = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in self.gap.items()}
            gap["remedy"] = "cohortstream orthanc reconcile"
        return {
            "status": status,
            "checkpoint_seq": self.checkpoint_seq,
            "orthanc_last_seq": self.orthanc_last_seq,
            "lag_changes": self.lag_changes,
            "lag_seconds": self.lag_seconds,
            "last_change_date": self.last_change_date,
            "gap": gap,
        }


def create_status_app(status: FeedStatus) -> FastAPI:
    """``GET /healthz`` (200 once the feed has read Orthanc and stored a checkpoint, with a
    ``degraded`` status while a gap is open; 503 before or after) and ``GET /metrics``."""
    app = FastAPI(title="cohortstream Orthanc change feed", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = status.as_json()
        return JSONResponse(body, status_code=200 if body["status"] in {"ok", "degraded"} else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        LAG_SECONDS.set(status.lag_seconds)
        return PlainTextResponse(generate_latest().decode("utf-8"), media_type=CONTENT_TYPE_LATEST)

    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the feed handles SIGTERM and stops this server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def status_server(status: FeedStatus, host: str, port: int) -> uvicorn.Server:
    """The uvicorn server of :func:`create_status_app`, to run beside the feed's loop."""
    config = uvicorn.Config(
        create_status_app(status), host=host, port=port, log_level="warning", lifespan="off", log_config=None
    )
    return _Server(config)

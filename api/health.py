"""Liveness and readiness of the API.

- ``GET /healthz`` — the process answers (liveness); no I/O, always 200.
- ``GET /readyz`` — Kafka, MongoDB and Orthanc each probed once, concurrently, within
  ``COHORTSTREAM_API_READINESS_TIMEOUT_S``; each with ``status`` (``up``/``down``),
  ``latency_ms`` and, when down, a short ``error`` (an exception class name, never a
  trace). ``consumer_lag`` gives, per consumer group (the worker's ``app_id`` and the
  annotator's ``<app_id>-annotator``, each lane's ``<app_id>-<lane>``), the lag per topic
  the group committed on. ``stalled`` lists the groups whose lag is above 0 and whose
  committed offset has not moved for ``COHORTSTREAM_CONSUMER_STALL_AFTER_S``, naming the
  group, its agents and the topic (:mod:`api.consumer_stalls`). ``status`` is ``ready``,
  ``degraded`` (every dependency up, but a consumer stalled: answered 200, since the API
  itself serves fine) or ``not ready`` (a dependency down: 503).

Both are open (no key): orchestrators and load balancers probe without credentials, and
the answers reveal only whether services are up, topic names and message counts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.consumer_stalls import StalledConsumer
from api.kafka_offsets import OffsetsReport, read_offsets
from api.services import ApiServices

__all__ = ["DependencyStatus", "Readiness", "probe_dependencies", "router"]

router = APIRouter(tags=["health"])


@dataclass(frozen=True)
class DependencyStatus:
    """One dependency's probe result."""

    up: bool
    latency_s: float
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": "up" if self.up else "down", "latency_ms": round(self.latency_s * 1000, 1)}
        if self.error:
            answer["error"] = self.error
        return answer


@dataclass(frozen=True)
class Readiness:
    """Every dependency's status and, when Kafka answered, its offsets."""

    dependencies: dict[str, DependencyStatus]
    offsets: OffsetsReport | None = None
    stalled: tuple[StalledConsumer, ...] = ()

    @property
    def ready(self) -> bool:
        return all(d.up for d in self.dependencies.values())

    @property
    def status(self) -> str:
        if not self.ready:
            return "not ready"
        return "degraded" if self.stalled else "ready"


async def _timed(probe: Any, timeout_s: float) -> tuple[DependencyStatus, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            result = await probe()
    except TimeoutError:
        return DependencyStatus(False, time.monotonic() - started, f"no answer within {timeout_s:g} s"), None
    except Exception as exc:
        return DependencyStatus(False, time.monotonic() - started, type(exc).__name__), None
    return DependencyStatus(True, time.monotonic() - started), result


class _OrthancRefused(Exception):
    """Orthanc answered, but not 200 (credentials refused, server error)."""


async def probe_dependencies(services: ApiServices) -> Readiness:
    """Probe Kafka (offsets of the catalogue and the groups), MongoDB (``ping``) and Orthanc (``/system``)."""
    settings = services.settings
    timeout_s = settings.api_readiness_timeout_s

    async def kafka() -> OffsetsReport:
        return await read_offsets(settings, timeout_s=timeout_s)

    async def mongodb() -> None:
        if services.db is None:
            raise RuntimeError("not connected")
        await services.db.command("ping")

    async def orthanc() -> None:
        response = await services.archive.client.get("/system", timeout=timeout_s)
        if response.status_code != 200:
            raise _OrthancRefused(f"HTTP {response.status_code}")

    (k, offsets), (m, _), (o, _) = await asyncio.gather(
        _timed(kafka, timeout_s), _timed(mongodb, timeout_s), _timed(orthanc, timeout_s)
    )
    stalled = tuple(services.stalls.observe(offsets)) if offsets is not None and services.stalls is not None else ()
    return Readiness(dependencies={"kafka": k, "mongodb": m, "orthanc": o}, offsets=offsets, stalled=stalled)


@router.get("/healthz", summary="Liveness: the process answers (no key needed)")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}``; checks nothing else, so a slow dependency never restarts the API."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: Kafka, MongoDB and Orthanc reachable, with consumer lag (no key needed)")
async def readyz(request: Request) -> JSONResponse:
    """200 when every dependency answered (``ready`` or ``degraded``), 503 otherwise (see the module docstring)."""
    readiness = await probe_dependencies(request.app.state.services)
    lag = {g.group: g.lag for g in readiness.offsets.groups} if readiness.offsets else {}
    body = {
        "status": readiness.status,
        "dependencies": {name: d.as_json() for name, d in readiness.dependencies.items()},
        "consumer_lag": lag,
        "stalled": [s.as_json() for s in readiness.stalled],
    }
    return JSONResponse(body, status_code=200 if readiness.ready else 503)

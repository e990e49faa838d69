"""The API application: data endpoints, annotation review, the MONAI Label subset,
health, readiness and metrics, all behind API keys (:mod:`api.auth`) but ``/healthz``
and ``/readyz``.

``create_api(settings)`` builds the application; its lifespan opens MongoDB (PyMongo async), the
``acks=all`` Kafka publisher and the Orthanc archive and closes them again, so building
an application does no I/O and tests can make one per test. ``serve_api`` runs it with
uvicorn on ``api_host:api_port`` (``cohortstream api``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import Scope

from api import annotations as annotation_routes
from api import (
    audit,
    cohorts,
    dashboard,
    dicomweb_proxy,
    exports,
    features,
    health,
    login,
    metrics,
    monailabel,
    ohif,
    statistics,
    subjects,
)
from api.auth import Authenticator, install_auth_handlers, key_store_lookup, session_store_lookup
from api.errors import install_error_handlers
from api.rate_limit import FailureLimiter
from api.services import ApiServices
from api.transport_security import StrictTransportSecurity, uvicorn_tls_options
from cohortstream import __version__
from cohortstream.http_limits import BodyLimits
from cohortstream.orthanc import OrthancClient
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings

__all__ = ["create_api", "serve_api", "uvicorn_options"]

log = logging.getLogger(__name__)


def create_api(
    settings: Settings, *, publisher: EventPublisher | None = None, archive: OrthancClient | None = None
) -> FastAPI:
    """The application. ``publisher``/``archive`` default to the real ones for ``settings``;
    the lifespan starts and closes them (do not start them yourself)."""
    services = ApiServices(settings, publisher or EventPublisher(settings), archive or OrthancClient(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.open()
        log.info("API ready", extra={"host": settings.api_host, "port": settings.api_port})
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title="cohortstream API", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.state.authenticator = Authenticator(
        key_store_lookup(app),
        cache_ttl_s=settings.api_key_cache_ttl_s,
        session_lookup=session_store_lookup(app),
        limiter=FailureLimiter(settings.api_auth_failures_per_minute),
    )
    app.state.metrics_registry = CollectorRegistry(auto_describe=True)
    app.add_middleware(audit.AuditMiddleware)  # inside the metrics: a refused audit is timed as its 503
    app.add_middleware(BodyLimits, limit_for=body_limit(settings), timeout_s=settings.api_body_timeout_s, service="api")
    app.add_middleware(metrics.RequestMetrics, histogram=metrics.request_histogram(app.state.metrics_registry))
    if settings.api_tls:
        app.add_middleware(StrictTransportSecurity, max_age_s=settings.api_hsts_max_age_s)
    install_error_handlers(app)
    install_auth_handlers(app)

    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(features.router)  # before subjects: /subjects/{subject:path} would take /features
    app.include_router(subjects.router)
    app.include_router(cohorts.router)
    app.include_router(statistics.router)
    app.include_router(annotation_routes.router)
    app.include_router(monailabel.router)
    app.include_router(dashboard.router)
    app.include_router(exports.router)
    app.include_router(login.router)
    app.include_router(dicomweb_proxy.router)
    app.include_router(ohif.router)
    app.include_router(audit.router)
    return app


_UPLOAD_ROUTES = ("/proxy/dicom/", "/infer/", "/datastore")
"""Routes whose bodies are DICOM (a STOW-RS, an image or label for MONAI Label), besides
``/annotations/{id}/correct``: the SEG upload limit applies to them."""


def body_limit(settings: Settings) -> Callable[[Scope], int]:
    """The largest body of a request: the SEG upload limit for DICOM uploads, the query
    limit for every JSON body (cohort query and export, reviews, export jobs)."""

    def limit_for(scope: Scope) -> int:
        path = str(scope.get("path", ""))
        if path.endswith("/correct") or path.startswith(_UPLOAD_ROUTES):
            return settings.api_max_seg_upload_bytes
        return settings.api_max_query_bytes

    return limit_for


def serve_api(settings: Settings) -> int:
    """Serve the API with uvicorn on ``api_host:api_port`` until stopped (HTTPS when the
    TLS certificate and key are set)."""
    import uvicorn

    # log_config=None keeps the logging that cohortstream.cli configured.
    uvicorn.run(**uvicorn_options(settings))
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``serve_api`` hands uvicorn: the app, the address, TLS (tests serve the same way)."""
    return {
        "app": create_api(settings),
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        **uvicorn_tls_options(settings),
    }

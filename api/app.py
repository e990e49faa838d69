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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api import annotations as annotation_routes
from api import (
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
from api.services import ApiServices
from cohortstream import __version__
from cohortstream.orthanc import OrthancClient
from cohortstream.publisher import EventPublisher
from cohortstream.settings import Settings

__all__ = ["create_api", "serve_api"]

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
        key_store_lookup(app), cache_ttl_s=settings.api_key_cache_ttl_s, session_lookup=session_store_lookup(app)
    )
    app.state.metrics_registry = CollectorRegistry(auto_describe=True)
    app.add_middleware(metrics.RequestMetrics, histogram=metrics.request_histogram(app.state.metrics_registry))
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
    return app


def serve_api(settings: Settings) -> int:
    """Serve the API with uvicorn on ``api_host:api_port`` until stopped."""
    import uvicorn

    # log_config=None keeps the logging that cohortstream.cli configured.
    uvicorn.run(create_api(settings), host=settings.api_host, port=settings.api_port, log_config=None)
    return 0

"""The HTTP endpoint for REDCap's Data Entry Trigger (``POST /redcap/trigger``).

For each trigger, in this order:

0. **413** for a body larger than ``redcap_trigger_max_bytes``, **408** for one not
   complete within ``api_body_timeout_s`` (:mod:`cohortstream.http_limits`).
1. **403** unless the caller's address is in ``redcap_allowed_networks`` (when set) and the
   URL carries ``?secret=`` equal to ``redcap_trigger_secret`` (when set). Checked before
   the body is read.
2. **400** naming the fields when the form lacks ``project_id``, ``instrument``, ``record``
   or ``redcap_url`` or has malformed ones. Unknown fields are tolerated and logged.
3. **403** unless the trigger names a configured project of a configured server.
4. The record is pulled with the project's token (``content=record`` restricted to the
   record, instrument and event) and typed with the cached data dictionary. Transient API
   errors are retried with bounded backoff; **503** when they persist, **502** when REDCap
   answers with a permanent error (bad token, unknown instrument: a configuration problem
   that retrying cannot fix).
5. The :class:`~cohortstream.events.RedcapRecordChanged` event is published with
   ``acks=all`` and the endpoint answers **200** only once Kafka acknowledged it; **503**
   when it did not.

REDCap does **not** retry a failed trigger (it logs nothing useful either), so a trigger
answered 5xx is lost for the stream: ``cohortstream redcap sync`` is the recovery path
and should also run on a schedule. Error bodies are JSON ``{"error": ...}`` and name
fields, never values or stack traces. Logs carry project, record, event and instrument
names, never values of the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from cohortstream.http_limits import BodyLimits
from cohortstream.publisher import EventPublisher, PublishError
from cohortstream.settings import RedcapProject, Settings
from producers.redcap.api import RedcapApiClient
from producers.redcap.errors import RedcapApiError, RedcapError, TriggerInvalid, TriggerRejected
from producers.redcap.records import event_key, trigger_events
from producers.redcap.trigger import DataEntryTrigger, authorize_source, match_project

__all__ = ["TRIGGER_PATH", "ApiClientFactory", "create_trigger_app", "serve_webhook"]

log = logging.getLogger(__name__)

TRIGGER_PATH = "/redcap/trigger"
ApiClientFactory = Callable[[RedcapProject], RedcapApiClient]


def _error(status: int, message: str, **more: object) -> JSONResponse:
    return JSONResponse({"error": message, **more}, status_code=status)


def create_trigger_app(settings: Settings, publisher: EventPublisher, api_client_factory: ApiClientFactory) -> FastAPI:
    """The DET application. Its lifespan starts and stops ``publisher`` (do not start it
    yourself; if Kafka is down at start the app still starts, answers 503 and connects on a
    later trigger) and closes the API clients, one per project, made by ``api_client_factory``."""
    clients: dict[tuple[str, str], RedcapApiClient] = {}

    def client_for(project: RedcapProject) -> RedcapApiClient:
        key = (project.redcap_url, project.project_id)
        if key not in clients:
            clients[key] = api_client_factory(project)
        return clients[key]

    publisher_lock = asyncio.Lock()
    publisher_started = False

    async def ensure_publisher() -> None:
        # Connect lazily again after a failed start, so the endpoint heals once Kafka is back.
        nonlocal publisher_started
        async with publisher_lock:
            if not publisher_started:
                await publisher.start()
                publisher_started = True

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await ensure_publisher()
        except PublishError as exc:
            log.error("Kafka unreachable at start; triggers get 503 until it is back", extra={"error": str(exc)})
        log.info("REDCap trigger endpoint ready", extra={"projects": len(settings.redcap_projects)})
        try:
            yield
        finally:
            for client in clients.values():
                await client.aclose()
            await publisher.stop()

    app = FastAPI(
        title="cohortstream REDCap Data Entry Trigger",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    app.add_middleware(
        BodyLimits,
        limit_for=lambda scope: settings.redcap_trigger_max_bytes,
        timeout_s=settings.api_body_timeout_s,
        service="redcap-trigger",
    )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error handling a REDCap trigger", exc_info=exc, extra={"path": request.url.path})
        return _error(500, "internal error")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(TRIGGER_PATH)
    async def trigger(request: Request) -> JSONResponse:
        client_host = request.client.host if request.client else None
        try:
            authorize_source(settings, client_host, request.query_params.get("secret"))
        except TriggerRejected as exc:
            log.warning("REDCap trigger refused", extra={"reason": exc.reason, "client": client_host})
            return _error(403, "forbidden")

        try:
            form = await request.form()
        except ClientDisconnect:  # gone, or refused by the body limits (413/408 already sent)
            log.warning("REDCap trigger body not received", extra={"client": client_host})
            return _error(400, "request body not received")
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        try:
            det = DataEntryTrigger.from_form(fields)
        except TriggerInvalid as exc:
            log.warning(
                "invalid REDCap trigger",
                extra={"missing": list(exc.missing), "invalid": list(exc.invalid), "client": client_host},
            )
            return _error(400, str(exc), missing=list(exc.missing), invalid=list(exc.invalid))
        if det.extra_fields:
            log.info(
                "REDCap trigger carries unknown fields (ignored)",
                extra={**det.log_fields, "fields": list(det.extra_fields)},
            )

        try:
            project = match_project(settings.redcap_projects, det)
        except TriggerRejected as exc:
            log.warning("REDCap trigger refused", extra={**det.log_fields, "reason": exc.reason, "client": client_host})
            return _error(403, "forbidden")

        client = client_for(project)
        try:
            dictionary = await client.data_dictionary()
            if det.instrument not in dictionary.forms:
                client.forget_dictionary()  # the design may have changed since we cached it
                dictionary = await client.data_dictionary()
            rows = await client.export_records(
                records=[det.record], forms=[det.instrument], events=[det.event_name] if det.event_name else None
            )
            events = trigger_events(
                project,
                dictionary,
                rows,
                record=det.record,
                instrument=det.instrument,
                event_name=det.event_name,
                repeat_instrument=det.repeat_instrument,
                repeat_instance=det.repeat_instance,
                data_access_group=det.data_access_group,
            )
        except RedcapApiError as exc:
            status = 503 if exc.transient else 502
            log.error(
                "cannot read the record from the REDCap API",
                extra={**det.log_fields, "error": str(exc), "answer": status},
            )
            return _error(status, "REDCap API unavailable" if exc.transient else "REDCap API refused the export")
        except RedcapError as exc:
            log.error("cannot type the record with the data dictionary", extra={**det.log_fields, "error": str(exc)})
            return _error(502, str(exc))

        if not events:
            log.warning("REDCap API holds no row for the triggered form; nothing published", extra=det.log_fields)
            return JSONResponse({"status": "no data", "published": 0})
        try:
            await ensure_publisher()
            for event in events:
                await publisher.publish(event, key=event_key(event))
        except PublishError as exc:
            log.error("Kafka did not acknowledge the REDCap event", extra={**det.log_fields, "error": str(exc)})
            return _error(503, "event store unavailable")
        log.info("REDCap record change published", extra={**det.log_fields, "events": len(events)})
        return JSONResponse({"status": "published", "published": len(events)})

    return app


def serve_webhook(settings: Settings) -> int:
    """Serve the endpoint with uvicorn on ``redcap_webhook_host:redcap_webhook_port`` until stopped."""
    import uvicorn

    if not settings.redcap_projects:
        log.warning("no REDCap project configured (COHORTSTREAM_REDCAP_PROJECTS): every trigger gets 403")
    app = create_trigger_app(settings, EventPublisher(settings), lambda project: RedcapApiClient(settings, project))
    # log_config=None keeps the logging that cohortstream.cli configured.
    uvicorn.run(app, host=settings.redcap_webhook_host, port=settings.redcap_webhook_port, log_config=None)
    return 0

"""The API's side of the audit trail: every access to personal data is recorded before it is served.

Routes that serve personal data declare it with a dependency, ``dependencies=[audited("subjects.read")]``,
and say whose data they serve with :func:`audit_subjects`. :class:`AuditMiddleware`
(plain ASGI) then holds back the answer's first message (``http.response.start``): at
that point the status is known and not one byte has left. It publishes the
``AccessAudited`` event (:mod:`cohortstream.audit`) and waits for Kafka's
acknowledgement; only then does the answer go out. When the audit cannot be recorded,
the answer is replaced by **503** ``{"error": "audit trail unavailable ..."}`` and the
prepared answer (a JSON body, or a stream not yet started) is dropped: nothing is served
unaudited. An answer that fails after the route named the subjects (a 409, the
archive's 503) is recorded too, with its outcome; one refused before any data was looked
at (a 422 body, an unknown subject, a credential or role refused: 401/403, a rate limit:
429) served nothing and is not (:mod:`api.auth` logs refused keys).

``GET /audit`` (admin) answers who accessed a subject (``subject``: id or identifier)
and what a key did (``key``: key id or ``cli:<user>``), newest first, optionally ``since``
a time; the same query as ``cohortstream audit``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import ADMIN, Principal
from api.errors import ApiError, error_response
from api.services import ApiServices, get_services
from cohortstream.audit import (
    NOT_AUDITED_STATUSES,
    Actor,
    AuditUnavailableError,
    access_event,
    find_audit_events,
    outcome_of_status,
    publish_audit,
    sha256_hex,
)
from cohortstream.subject_view import SubjectNotFoundError, resolve_subject_id
from cohortstream.subjects import SubjectIdentifierError

__all__ = ["PRODUCER", "AuditContext", "AuditMiddleware", "audit_before_acting", "audit_subjects", "audited", "router"]

log = logging.getLogger(__name__)

PRODUCER = "api"
_STATE_KEY = "audit"


@dataclass
class AuditContext:
    """What the route declared about the access it serves (kept in the request's scope state)."""

    action: str
    query_sha256: str | None = None
    subject_ids: list[str] | None = field(default_factory=list)
    """Subjects whose data the answer holds; None: cannot be known before serving (a search)."""
    reached: bool = False
    recorded_status: int | None = None
    """Set by :func:`audit_before_acting`: the event already recorded for this status."""
    """The route got as far as naming the subjects (:func:`audit_subjects`): an answer that
    fails after that (a 409, an archive's 503) is audited too; one that fails before it
    (a 422 body, an unknown subject) looked at no one's data and is not."""


def audited(action: str, *, hash_body: bool = True) -> Any:
    """Route dependency: the route serves personal data; record ``action`` before answering.

    ``hash_body``: record the sha256 of the JSON body (FastAPI has read it already);
    without a body, of the query string. Off for streamed or multipart bodies, which
    their route hashes itself (:func:`audit_hash`)."""

    async def dependency(request: Request) -> AuditContext:
        data = b""
        if hash_body and request.method in ("POST", "PUT", "PATCH"):
            data = await request.body()
        if not data:
            data = request.url.query.encode("utf-8")
        context = AuditContext(action=action, query_sha256=sha256_hex(data))
        request.state.audit = context
        return context

    dependency.__name__ = f"audited_{action.replace('.', '_')}"
    return Depends(dependency)


def audit_subjects(request: Request, subject_ids: Iterable[str] | None) -> None:
    """Name the subjects whose data this answer holds (None: unknown before serving)."""
    context: AuditContext | None = getattr(request.state, _STATE_KEY, None)
    if context is None:
        raise RuntimeError(f"{request.url.path}: audit_subjects() on a route without audited()")
    context.subject_ids = None if subject_ids is None else sorted(set(subject_ids))
    context.reached = True


async def audit_before_acting(request: Request, status: int) -> None:
    """Record the access now, as answered with ``status``, before the route changes
    anything (a review published as an event, a SEG stored in Orthanc): otherwise a review
    could take effect and only its audit fail. No acknowledgement: **503** and nothing was
    done. The middleware does not record the same answer again; should the route then
    answer otherwise (the review's own publish failed), that outcome is recorded too."""
    context: AuditContext | None = getattr(request.state, _STATE_KEY, None)
    principal: Principal | None = getattr(request.state, "principal", None)
    if context is None or principal is None:
        raise RuntimeError(f"{request.url.path}: audit_before_acting() on a route without audited() or a principal")
    try:
        await _record_access(request.scope, context, principal, status)
    except AuditUnavailableError as exc:
        raise ApiError(503, "audit trail unavailable; nothing was done, retry later") from exc
    context.recorded_status = status


def audit_hash(request: Request, data: bytes) -> None:
    """Record the sha256 of a body the route read itself (a multipart upload)."""
    context: AuditContext | None = getattr(request.state, _STATE_KEY, None)
    if context is not None:
        context.query_sha256 = sha256_hex(data)


class _AuditRefused(Exception):
    """Raised from ``send`` to stop an answer whose audit was not recorded."""


def _refused_in(exc: BaseException) -> bool:
    if isinstance(exc, _AuditRefused):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_refused_in(inner) for inner in exc.exceptions)
    return False


class AuditMiddleware:
    """ASGI middleware: publish the audit event of an audited route before its answer starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                context: AuditContext | None = state.get(_STATE_KEY)
                principal: Principal | None = state.get("principal")
                status = int(message["status"])
                if (
                    context is not None
                    and principal is not None
                    and status not in NOT_AUDITED_STATUSES
                    and (status < 400 or context.reached)
                    and status != context.recorded_status
                ):
                    try:
                        await _record_access(scope, context, principal, status)
                    except AuditUnavailableError as exc:
                        raise _AuditRefused() from exc
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:
            if not _refused_in(exc):
                raise
            response = error_response(503, "audit trail unavailable; nothing was served, retry later")
            response.headers["Retry-After"] = "5"
            await response(scope, receive, send)


async def _record_access(scope: Scope, context: AuditContext, principal: Principal, status: int) -> None:
    """Publish the access's audit event and wait for Kafka's acknowledgement."""
    services: ApiServices = scope["app"].state.services
    route = scope.get("route")
    client = scope.get("client")
    actor = Actor(
        actor_id=principal.key_id or f"name:{principal.name}",
        name=principal.name,
        role=principal.role.value,
        source_address=client[0] if client else None,
    )
    event = access_event(
        services.settings,
        actor,
        producer=PRODUCER,
        action=context.action,
        endpoint=f"{scope.get('method', '')} {getattr(route, 'path', '?')}",
        outcome=outcome_of_status(status),
        subject_ids=context.subject_ids,
        query_sha256=context.query_sha256,
        status=status,
    )
    try:
        await services.ensure_publisher()
    except Exception as exc:
        raise AuditUnavailableError(f"Kafka unreachable: {exc}") from exc
    await publish_audit(services.publisher, event)


router = APIRouter(prefix="/audit", tags=["audit"])
Services = Annotated[ApiServices, Depends(get_services)]


@router.get("", summary="Who accessed a subject, and what a key did (admin)")
async def list_audit_events(
    services: Services,
    _principal: Annotated[Principal, ADMIN],
    subject: Annotated[str | None, Query(min_length=1, description="Subject id or identifier (dicom:...).")] = None,
    key: Annotated[str | None, Query(min_length=1, description="API key id, or cli:<user>.")] = None,
    since: Annotated[
        datetime | None, Query(description="Only accesses at or after this time (ISO 8601 with zone).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Audit records matching every filter, newest first."""
    if since is not None and since.tzinfo is None:
        raise ApiError(422, "since: give a time zone (e.g. 2024-05-01T00:00:00Z)", "since")
    db = services.require_db()
    subject_id = None
    if subject is not None:
        try:
            subject_id = await resolve_subject_id(db, subject)
        except SubjectIdentifierError as exc:
            raise ApiError(422, str(exc), "subject") from exc
        except SubjectNotFoundError:
            subject_id = subject  # a subject merged away or not yet registered still has its trail
    items = await find_audit_events(db, subject_id=subject_id, actor_id=key, since=since, limit=limit)
    return {"items": items, "limit": limit}

"""Endpoints of annotation suggestions: list, review queue, one suggestion, and its review.

=====================================================  =====================================
``GET  /annotations``                                  list; filters ``status``, ``model``,
                                                       ``study``, ``series``; ``sort=id`` (default)
                                                       or ``uncertainty``; ``limit`` (1–500,
                                                       default 50); ``cursor``
``GET  /annotations/queue``                            pending (``suggested``) suggestions, the
                                                       least certain first (MONAI Label's active
                                                       learning idea); ``model``, ``study``,
                                                       ``limit``, ``cursor``
``GET  /annotations/{annotation_id}``                  one suggestion with its ``history``
``POST /annotations/{annotation_id}/accept``           JSON ``{"reviewer"?, "reason"?, "expected_status"?}``
``POST /annotations/{annotation_id}/reject``           JSON ``{"reviewer"?, "reason", "expected_status"?}``
``POST /annotations/{annotation_id}/correct``          multipart: ``file`` (DICOM SEG), ``reviewer``?,
                                                       ``reason``?, ``expected_status``?
=====================================================  =====================================

Reads need a researcher key, reviews an admin key (:mod:`api.auth`). The reviewer
recorded in the event is the key's name unless the request names one: a review tool
that holds one admin key may act for the people it authenticated itself. Every review
is logged with the key's id, whatever ``reviewer`` says.

Lists answer ``{"items": [...], "next_cursor": str | null, "limit": n}``; items carry
every field of the view but ``history``. Reviews answer **202** ``{"event_id",
"annotation_id", "decision"}`` once Kafka acknowledged the ``AnnotationReviewed`` event:
the view shows the new status when the views agent has folded it in, shortly after.
**404** unknown annotation, **409** ``expected_status`` differs from the current status,
**422** invalid input (the ``field`` names it), **503** Kafka (or, for corrections,
Orthanc) unavailable — safe to retry: a repeated correction stores the same SEG once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StringConstraints

from api.annotation_store import AnnotationFilters, AnnotationPage, public_document
from api.audit import audit_before_acting, audit_hash, audit_subjects, audited
from api.auth import ADMIN, ANNOTATOR, RESEARCHER, Principal
from api.errors import ApiError
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Cursor, CursorError, SortOrder
from api.reviews import AnnotationStatus, ReviewConflict, check_expected_status, review_event
from api.seg_upload import MAX_SEG_BYTES, SegUploadError, check_segmentation
from api.services import ApiServices, get_services
from cohortstream.audit import subjects_of_series
from cohortstream.events import AnnotationReviewed, ReviewDecision
from cohortstream.orthanc import OrthancRejectedError, OrthancUnavailableError
from cohortstream.publisher import PublishError

__all__ = ["AcceptBody", "RejectBody", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/annotations", tags=["annotations"])

Reviewer = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
Services = Annotated[ApiServices, Depends(get_services)]
AnnotationId = Annotated[str, Path(description="The suggestion's annotation_id (a UUID).")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, at most {MAX_LIMIT}.")]


class _ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reviewer: Reviewer | None = None
    """Who decides; default: the name of the API key (see the module docstring)."""
    expected_status: AnnotationStatus | None = None
    """Answer 409 instead of reviewing when the current status differs (optimistic check)."""


class AcceptBody(_ReviewBody):
    """Body of ``accept``."""

    reason: Reason | None = None


class RejectBody(_ReviewBody):
    """Body of ``reject``: the reason is required, so a rejection can be learned from."""

    reason: Reason


def _cursor(text: str | None, order: SortOrder) -> Cursor | None:
    if text is None:
        return None
    try:
        return Cursor.decode(text, order)
    except CursorError as exc:
        raise ApiError(422, str(exc), "cursor") from exc


def _page_answer(found: AnnotationPage, limit: int) -> dict[str, Any]:
    return {"items": found.items, "next_cursor": found.next_cursor, "limit": limit}


@router.get("", summary="List suggestions", dependencies=[RESEARCHER])
async def list_annotations(
    services: Services,
    status: AnnotationStatus | None = None,
    model: str | None = None,
    study: str | None = None,
    series: str | None = None,
    sort: SortOrder = SortOrder.ID,
    limit: Limit = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Suggestions matching the filters, one page at a time."""
    filters = AnnotationFilters(status=status, model_name=model, study_instance_uid=study, series_instance_uid=series)
    after = _cursor(cursor, sort)
    found = await services.store.find_page(filters, sort, limit, after)
    return _page_answer(found, limit)


@router.get("/queue", summary="Pending suggestions, least certain first", dependencies=[RESEARCHER])
async def review_queue(
    services: Services,
    model: str | None = None,
    study: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    """What a reviewer should look at next: the suggestions the model is least sure of
    gain the most from a human decision (uncertainty sampling, as in MONAI Label)."""
    filters = AnnotationFilters(status=AnnotationStatus.SUGGESTED, model_name=model, study_instance_uid=study)
    order = SortOrder.UNCERTAINTY
    after = _cursor(cursor, order)
    found = await services.store.find_page(filters, order, limit, after)
    return _page_answer(found, limit)


async def _annotation(services: ApiServices, annotation_id: str) -> dict[str, Any]:
    doc = await services.store.get(annotation_id)
    if doc is None:
        raise ApiError(404, f"no annotation {annotation_id}", "annotation_id")
    return doc


@router.get("/{annotation_id}", summary="One suggestion with its review history", dependencies=[RESEARCHER])
async def get_annotation(services: Services, annotation_id: AnnotationId) -> dict[str, Any]:
    """The suggestion, its current status and every review so far (``history``)."""
    return public_document(await _annotation(services, annotation_id))


def _check_status(doc: dict[str, Any], expected: AnnotationStatus | None) -> None:
    try:
        check_expected_status(doc, expected)
    except ReviewConflict as exc:
        raise ApiError(409, str(exc), "expected_status") from exc


Admin = Annotated[Principal, ADMIN]
Annotator = Annotated[Principal, ANNOTATOR]


async def _publish_review(
    services: ApiServices, event: AnnotationReviewed, principal: Principal, **more: Any
) -> JSONResponse:
    log_fields = {
        "annotation_id": str(event.annotation_id),
        "series_instance_uid": event.series_instance_uid,
        "decision": event.decision.value,
        "key_id": principal.key_id,
    }
    try:
        await services.publish(event, key=event.series_instance_uid)
    except PublishError as exc:
        log.error("Kafka did not acknowledge a review", extra={**log_fields, "error": str(exc)})
        raise ApiError(503, "event store unavailable; the review was not recorded, retry later") from exc
    log.info("review published", extra={**log_fields, "event_id": str(event.event_id)})
    return JSONResponse(
        {
            "event_id": str(event.event_id),
            "annotation_id": str(event.annotation_id),
            "decision": event.decision.value,
            **more,
        },
        status_code=202,
    )


async def _audit_review(request: Request, services: ApiServices, doc: dict[str, Any]) -> None:
    audit_subjects(request, await subjects_of_series(services.require_db(), [str(doc["series_instance_uid"])]))


@router.post(
    "/{annotation_id}/accept",
    status_code=202,
    summary="Accept a suggestion as it is",
    dependencies=[audited("annotations.review")],
)
async def accept(
    request: Request, services: Services, principal: Admin, annotation_id: AnnotationId, body: AcceptBody
) -> JSONResponse:
    """Publish ``AnnotationReviewed(decision=ACCEPTED)`` (admin key; reviewer defaults to its name)."""
    doc = await _annotation(services, annotation_id)
    await _audit_review(request, services, doc)
    _check_status(doc, body.expected_status)
    event = review_event(doc, ReviewDecision.ACCEPTED, body.reviewer or principal.name, reason=body.reason)
    await audit_before_acting(request, 202)
    return await _publish_review(services, event, principal)


@router.post(
    "/{annotation_id}/reject",
    status_code=202,
    summary="Reject a suggestion (reason required)",
    dependencies=[audited("annotations.review")],
)
async def reject(
    request: Request, services: Services, principal: Admin, annotation_id: AnnotationId, body: RejectBody
) -> JSONResponse:
    """Publish ``AnnotationReviewed(decision=REJECTED)`` with the reviewer's reason (admin key)."""
    doc = await _annotation(services, annotation_id)
    await _audit_review(request, services, doc)
    _check_status(doc, body.expected_status)
    event = review_event(doc, ReviewDecision.REJECTED, body.reviewer or principal.name, reason=body.reason)
    await audit_before_acting(request, 202)
    return await _publish_review(services, event, principal)


def _form_text(value: str | None, field: str, *, required: bool, max_length: int) -> str | None:
    text = (value or "").strip()
    if not text:
        if required:
            raise ApiError(422, f"{field}: Field required", field)
        return None
    if len(text) > max_length:
        raise ApiError(422, f"{field}: at most {max_length} characters", field)
    return text


async def _store_in_orthanc(services: ApiServices, data: bytes, what: str) -> str:
    # The archive retries an unavailable Orthanc without end (backpressure for agents);
    # a person waiting for an answer gets 503 after one request timeout instead.
    try:
        async with asyncio.timeout(services.settings.orthanc_timeout_s):
            return await services.archive.store_bytes(data, what)
    except (TimeoutError, OrthancUnavailableError) as exc:
        raise ApiError(503, "DICOM archive unavailable; the correction was not recorded, retry later") from exc
    except OrthancRejectedError as exc:
        raise ApiError(422, "the DICOM archive refused the file", "file") from exc


@router.post(
    "/{annotation_id}/correct",
    status_code=202,
    summary="Replace a suggestion by a corrected DICOM SEG",
    dependencies=[audited("annotations.review", hash_body=False)],
)
async def correct(
    request: Request,
    services: Services,
    principal: Annotator,
    annotation_id: AnnotationId,
    file: Annotated[UploadFile, File(description="The corrected segmentation, a DICOM SEG Part-10 file.")],
    reviewer: Annotated[str | None, Form()] = None,
    reason: Annotated[str | None, Form()] = None,
    expected_status: Annotated[AnnotationStatus | None, Form()] = None,
) -> JSONResponse:
    """Check the SEG, store it in Orthanc, publish ``AnnotationReviewed(decision=CORRECTED)``.

    Annotator or admin key; ``reviewer`` defaults to the key's name.
    If Kafka fails after Orthanc stored the SEG, the answer is 503 and a retry is safe
    (Orthanc keeps one copy of a SOP instance).
    """
    reviewer_name = _form_text(reviewer, "reviewer", required=False, max_length=256) or principal.name
    reason_text = _form_text(reason, "reason", required=False, max_length=4000)
    doc = await _annotation(services, annotation_id)
    await _audit_review(request, services, doc)
    _check_status(doc, expected_status)
    data = await file.read(MAX_SEG_BYTES + 1)
    audit_hash(request, data)
    series_uid = str(doc["series_instance_uid"])

    async def in_series(uids: frozenset[str]) -> bool:
        return await services.store.instances_in_series(uids, series_uid)

    try:
        seg = await check_segmentation(data, series_uid, in_series)
    except SegUploadError as exc:
        raise ApiError(422, str(exc), exc.field) from exc
    if seg.sop_instance_uid == doc.get("seg_sop_instance_uid"):
        raise ApiError(422, "the file is the suggested SEG itself; accept the suggestion instead", "file")
    await audit_before_acting(request, 202)  # recorded before the SEG is stored or the review published
    orthanc_id = await _store_in_orthanc(services, data, f"corrected SEG of series {series_uid}")
    log.info(
        "corrected SEG stored",
        extra={
            "annotation_id": str(doc["_id"]),
            "series_instance_uid": series_uid,
            "seg_sop_instance_uid": seg.sop_instance_uid,
            "orthanc_id": orthanc_id,
        },
    )
    event = review_event(
        doc,
        ReviewDecision.CORRECTED,
        reviewer_name,
        reason=reason_text,
        corrected_seg_sop_instance_uid=seg.sop_instance_uid,
    )
    return await _publish_review(
        services, event, principal, corrected_seg_sop_instance_uid=seg.sop_instance_uid, orthanc_id=orthanc_id
    )

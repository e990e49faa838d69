"""Endpoints of research subjects: list, one subject across every modality, EHR timeline.

=====================================================  =====================================
``GET /subjects``                                      list; filters ``modality`` (DICOM, e.g.
                                                       ``MR``), ``has_questionnaire`` (bool),
                                                       ``sex`` (``M``/``F``/``O``), ``source``
                                                       (``dicom``/``redcap``/``ehr``);
                                                       ``limit`` (1–500, default 50); ``cursor``
``GET /subjects/{subject}``                            imaging (patients → studies → series with
                                                       Orthanc links and AI annotations),
                                                       questionnaires, EHR summary
``GET /subjects/{subject}/timeline``                   EHR facts in time order; ``limit``
                                                       (1–500, default 100), ``after`` (ISO time)
=====================================================  =====================================

``{subject}`` is the registry's subject id (``S`` + 15 hex digits) **or** any of its
identifiers, URL-encoded: ``dicom%3AP-0001``, ``ehr%3Amimic-iv%7C10000032``,
``redcap%3Ahttps%3A%2F%2Fredcap.example.org%2F%7C42%7C1001``. The path parameter takes
slashes (REDCap identifiers hold a URL), so an identifier that itself ends in
``/timeline`` cannot be looked up here; use its subject id.

The list is read from the read model the view sinks keep (the filters' subject sets,
walked from the cursor, see :mod:`api.subject_store`) and ordered by subject id; its
cursor is opaque and resumes after the last subject of the previous page, so subjects
registered meanwhile are neither repeated nor skipped (except those that sort before
the cursor). **404** unknown subject, **422**
invalid input (the ``field`` names it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from api import auth
from api.audit import audit_subjects, audited
from api.errors import ApiError
from api.pagination import MAX_LIMIT, Cursor, CursorError, SortOrder
from api.services import ApiServices, get_services
from api.subject_models import SubjectDetail, SubjectPage, SubjectSummary, TimelinePage, subject_detail, timeline_entry
from api.subject_store import Sex, Source, SubjectFilters, page_of_summaries
from cohortstream.subject_view import SubjectNotFoundError, ehr_timeline, resolve_subject_id, subject_view
from cohortstream.subjects import SubjectIdentifierError

__all__ = ["router"]

# Until the access control exists (api/auth.py's stub has RESEARCHER = None) no guard.
_GUARD = [auth.RESEARCHER] if auth.RESEARCHER is not None else []

router = APIRouter(prefix="/subjects", tags=["subjects"], dependencies=_GUARD)

Services = Annotated[ApiServices, Depends(get_services)]
SubjectRef = Annotated[str, Path(description="Subject id (S...) or an identifier such as dicom:P-0001, URL-encoded.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, at most {MAX_LIMIT}.")]


async def resolve(services: ApiServices, subject: str) -> str:
    """The subject id of ``subject`` (an id or an identifier); 404/422 otherwise."""
    try:
        return await resolve_subject_id(services.connected_db(), subject)
    except SubjectIdentifierError as exc:
        raise ApiError(422, str(exc), "subject") from exc
    except SubjectNotFoundError as exc:
        raise ApiError(404, "no such subject", "subject") from exc


@router.get("", summary="List subjects", response_model=SubjectPage, dependencies=[audited("subjects.list")])
async def list_subjects(
    request: Request,
    services: Services,
    modality: Annotated[str | None, Query(min_length=1, max_length=16, description="DICOM modality, e.g. MR.")] = None,
    has_questionnaire: Annotated[
        bool | None, Query(description="Has (true) or lacks (false) any REDCap questionnaire.")
    ] = None,
    sex: Annotated[Sex | None, Query(description="M, F or O (DICOM PatientSex, else EHR gender).")] = None,
    source: Annotated[Source | None, Query(description="Has an identifier of this source.")] = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> SubjectPage:
    """Subjects meeting every filter, in subject id order, one page at a time."""
    after = None
    if cursor is not None:
        try:
            after = Cursor.decode(cursor, SortOrder.ID).last_id
        except CursorError as exc:
            raise ApiError(422, str(exc), "cursor") from exc
    db = services.connected_db()
    filters = SubjectFilters(modality=modality, has_questionnaire=has_questionnaire, sex=sex, source=source)
    rows, last = await page_of_summaries(db, filters, limit, after)
    items = [SubjectSummary(**s) for s in rows]
    audit_subjects(request, (item.subject_id for item in items))
    next_cursor = Cursor(SortOrder.ID, last).encode() if last is not None else None
    return SubjectPage(items=items, next_cursor=next_cursor, limit=limit)


@router.get(
    "/{subject:path}/timeline",
    summary="A subject's EHR timeline",
    response_model=TimelinePage,
    dependencies=[audited("subjects.timeline")],
)
async def timeline(
    request: Request,
    services: Services,
    subject: SubjectRef,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"At most {MAX_LIMIT} entries.")] = 100,
    after: Annotated[
        datetime | None, Query(description="Only facts strictly after this time (ISO 8601 with zone).")
    ] = None,
) -> TimelinePage:
    """The subject's EHR facts, oldest first; undated facts follow on the first page only.

    Paging is by time: pass ``next_after`` as ``after``. ``after`` is exclusive, so facts
    that share the time of a full page's last entry and did not fit on it are not on the
    next page either: ask for a larger ``limit`` when many facts share one time.
    """
    if after is not None and after.tzinfo is None:
        raise ApiError(422, "after: give a time zone (e.g. 2024-05-01T00:00:00Z)", "after")
    subject_id = await resolve(services, subject)
    audit_subjects(request, [subject_id])
    docs = await ehr_timeline(services.connected_db(), subject_id, limit=limit + 1, after=after)
    items = docs[:limit]
    dated_more = len(docs) > limit and items and items[-1].get("effective_at") is not None
    return TimelinePage(
        subject_id=subject_id,
        items=[timeline_entry(d) for d in items],
        limit=limit,
        next_after=items[-1]["effective_at"] if dated_more else None,
    )


@router.get(
    "/{subject:path}",
    summary="One subject across every modality",
    response_model=SubjectDetail,
    dependencies=[audited("subjects.read")],
)
async def get_subject(request: Request, services: Services, subject: SubjectRef) -> SubjectDetail:
    """Imaging with Orthanc and viewer links and each series' AI suggestions, questionnaires
    and the EHR summary (demographics, diagnoses, latest lab per code)."""
    db = services.connected_db()
    try:
        view = await subject_view(db, subject)  # the same query as ``cohortstream subjects show``
    except SubjectIdentifierError as exc:
        raise ApiError(422, str(exc), "subject") from exc
    except SubjectNotFoundError as exc:  # unknown, or merged away between the reads
        raise ApiError(404, "no such subject", "subject") from exc
    audit_subjects(request, [str(view["subject_id"])])
    series_uids = [s["_id"] for p in view["imaging"] for st in p["study_detail"] for s in st["series_detail"]]
    annotations: dict[str, list[dict[str, Any]]] = {}
    if series_uids:
        docs = (
            await db["annotations"]
            .find({"series_instance_uid": {"$in": series_uids}}, {"history": 0})
            .sort("_id")
            .to_list()
        )
        for doc in docs:
            annotations.setdefault(str(doc["series_instance_uid"]), []).append(doc)
    return subject_detail(view, services.settings.orthanc_url, annotations)

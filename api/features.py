"""Feature vectors over HTTP (issue 18), in their own router so other API work merges cleanly.

========================================================  ======================================
``GET /subjects/{subject}/features``                      one subject's feature document (id or
                                                          identifier); 404 when it has none yet
``POST /cohorts/features?format=parquet|csv``             body: a cohort query; streams the
                                                          feature matrix of its subjects
``GET /features/dictionary``                              the data dictionary of every subject's
                                                          matrix (columns, source, unit, statistic)
``GET /features/summary?feature=…``                       block coverage and the distribution of
                                                          the chosen columns (the dashboard's view)
========================================================  ======================================

The matrix is written in two passes over the ``features`` collection (the columns, then
the rows, one Parquet row group or CSV chunk per 1,000 subjects), so a cohort of any size
never sits in memory; ``X-Cohort-Count`` says how many rows follow. A subject's vector
and a cohort's matrix are personal data: both are audited before they are served
(:mod:`api.audit`, actions ``features.read`` and ``exports.features``); the dictionary and
the summary (coverage, histograms over every subject) are not. Mounted before
:mod:`api.subjects`, whose ``/subjects/{subject:path}`` would otherwise take the path.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from api import auth
from api.audit import audit_subjects, audited
from api.errors import ApiError
from api.services import ApiServices, get_services
from api.subjects import SubjectRef, resolve
from cohortstream.cohort_query import CohortQuery, run_cohort_query
from cohortstream.features.export import matrix_plan, stream_matrix
from cohortstream.features.store import FeaturesNotBuiltError, feature_document_of
from cohortstream.features.summary import MAX_CHOSEN, feature_summary

__all__ = ["router"]

log = logging.getLogger(__name__)

_GUARD = [auth.RESEARCHER] if auth.RESEARCHER is not None else []

router = APIRouter(tags=["features"], dependencies=_GUARD)

Services = Annotated[ApiServices, Depends(get_services)]

_MEDIA = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv; charset=utf-8"}


@router.get(
    "/subjects/{subject:path}/features",
    summary="One subject's feature vector",
    dependencies=[audited("features.read")],
)
async def subject_features(request: Request, services: Services, subject: SubjectRef) -> dict[str, Any]:
    """The subject's feature document: ``features`` (column → value), ``blocks`` present,
    ``spec`` (name, version, sha256), ``as_of`` (its latest event) and ``lab_units``."""
    subject_id = await resolve(services, subject)
    audit_subjects(request, [subject_id])
    doc = await feature_document_of(services.connected_db(), subject_id)
    if doc is None:
        raise ApiError(404, "no features for this subject yet", "subject")
    doc.pop("_id", None)
    return doc


@router.get("/features/dictionary", summary="The feature matrix's data dictionary")
async def dictionary(services: Services) -> dict[str, Any]:
    try:
        plan = await matrix_plan(services.connected_db())
    except FeaturesNotBuiltError as exc:
        raise ApiError(404, str(exc)) from exc
    return plan.dictionary()


@router.get("/features/summary", summary="Feature coverage and distributions")
async def summary(
    services: Services,
    feature: Annotated[
        list[str] | None,
        Query(description=f"Columns to describe (repeat the parameter; at most {MAX_CHOSEN}); default: a few."),
    ] = None,
) -> dict[str, Any]:
    """``coverage``: per block, subjects holding it and their share; ``distributions``: per
    chosen column, a 20-bin histogram (numbers) or counts per code."""
    if feature is not None and len(feature) > MAX_CHOSEN:
        raise ApiError(422, f"at most {MAX_CHOSEN} features", "feature")
    return await feature_summary(services.connected_db(), feature)


@router.post(
    "/cohorts/features",
    summary="Stream the cohort's feature matrix as Parquet or CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {_MEDIA["parquet"]: {}, _MEDIA["csv"]: {}}}},
    dependencies=[audited("exports.features")],
)
async def cohort_features(
    request: Request,
    services: Services,
    query: CohortQuery,
    format: Annotated[Literal["parquet", "csv"], Query(description="parquet (default) or csv.")] = "parquet",
) -> StreamingResponse:
    """One row per subject of the query that has features; columns as ``/features/dictionary``
    (Parquet fields carry their dictionary entry as metadata)."""
    db = services.connected_db()
    result = await run_cohort_query(db, query)
    audit_subjects(request, result.subject_ids)  # recorded (acknowledged) before the first byte
    try:
        plan = await matrix_plan(db, result.subject_ids)
    except FeaturesNotBuiltError as exc:
        raise ApiError(404, str(exc)) from exc
    log.info("feature matrix export started", extra={"rows": plan.rows, "format": format})
    return StreamingResponse(
        stream_matrix(db, plan, format),
        media_type=_MEDIA[format],
        headers={
            "X-Cohort-Count": str(plan.rows),
            "Content-Disposition": f'attachment; filename="features.{format}"',
        },
    )

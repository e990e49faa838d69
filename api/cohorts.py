"""Endpoints of cross-modal cohort questions: the matching subjects, and their export.

=====================================================  =====================================
``POST /cohorts/query``                                body: a :class:`CohortQuery`
                                                       (``modalities``, ``questionnaires``,
                                                       ``labs``, ``diagnoses``; every criterion
                                                       must hold); answers ``{count,
                                                       subject_ids, per_criterion}``
``POST /cohorts/export?format=csv|ndjson``             same body; streams one row per subject
=====================================================  =====================================

Fields the query does not know answer **422** naming them (no criterion is silently
ignored). The export is a streaming response: the subject ids are computed first (a
set of short strings, as for ``/cohorts/query``), then the rows are built and sent in
chunks of :data:`EXPORT_CHUNK` subjects (one ``$in`` on the ``subject_facets`` read model
per chunk, which holds each subject's row), so a cohort of any size never sits in memory
as rows. Columns: ``subject_id``, ``sources`` and ``modalities`` (``;``-separated in
CSV), ``sex``, ``age_years``, ``study_count``, ``series_count``, ``questionnaire_count``,
``has_ehr``. The source identifiers (``identifiers`` of ``GET /subjects``: PatientIDs,
REDCap record ids, EHR subject ids) are not exported: nothing identifying leaves in a file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from api import auth
from api.audit import audit_subjects, audited
from api.services import ApiServices, get_services
from api.subject_models import CohortAnswer
from api.subject_store import subject_summaries
from cohortstream.cohort_query import CohortQuery, run_cohort_query
from cohortstream.subject_sets import SUMMARY_FIELDS

__all__ = ["EXPORT_CHUNK", "EXPORT_COLUMNS", "csv_lines", "ndjson_lines", "router"]

log = logging.getLogger(__name__)

_GUARD = [auth.RESEARCHER] if auth.RESEARCHER is not None else []

router = APIRouter(prefix="/cohorts", tags=["cohorts"], dependencies=_GUARD)

Services = Annotated[ApiServices, Depends(get_services)]

EXPORT_CHUNK = 1000
EXPORT_COLUMNS = ("subject_id", *(f for f in SUMMARY_FIELDS if f != "identifiers"))
"""The export's columns: the summary row without ``identifiers`` (PatientIDs, REDCap
record ids, EHR subject ids are direct identifiers; an export leaves the system, the
subject id stays the key to ask the API or the registry)."""
_MEDIA = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}


@router.post(
    "/query",
    summary="Subjects meeting every criterion",
    response_model=CohortAnswer,
    dependencies=[audited("cohorts.query")],
)
async def query_cohort(request: Request, services: Services, query: CohortQuery) -> CohortAnswer:
    """Answer the query from the subject sets the view sinks keep (one indexed find for
    every criterion, intersected in memory, see :mod:`cohortstream.cohort_query`);
    subject ids sorted."""
    result = await run_cohort_query(services.connected_db(), query)
    audit_subjects(request, result.subject_ids)
    log.info("cohort query answered", extra={"count": result.count, "criteria": len(result.per_criterion)})
    return CohortAnswer(count=result.count, subject_ids=result.subject_ids, per_criterion=result.per_criterion)


def csv_lines(rows: Sequence[dict[str, Any]], *, header: bool) -> str:
    """CSV text of summary rows (lists joined by ``;``; empty cell for null)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                ";".join(row[c]) if isinstance(row.get(c), list) else ("" if row.get(c) is None else row[c])
                for c in EXPORT_COLUMNS
            ]
        )
    return buffer.getvalue()


def ndjson_lines(rows: Sequence[dict[str, Any]]) -> str:
    """One JSON object per line, with the export columns."""
    return "".join(json.dumps({c: row.get(c) for c in EXPORT_COLUMNS}, separators=(",", ":")) + "\n" for row in rows)


async def _rows(db: Any, subject_ids: list[str], fmt: str) -> AsyncIterator[bytes]:
    if fmt == "csv":
        yield csv_lines([], header=True).encode("utf-8")
    for start in range(0, len(subject_ids), EXPORT_CHUNK):
        rows = await subject_summaries(db, subject_ids[start : start + EXPORT_CHUNK])
        text = csv_lines(rows, header=False) if fmt == "csv" else ndjson_lines(rows)
        yield text.encode("utf-8")


@router.post(
    "/export",
    summary="Stream the matching subjects as CSV or NDJSON",
    response_class=StreamingResponse,
    responses={200: {"content": {_MEDIA["csv"]: {}, _MEDIA["ndjson"]: {}}}},
    dependencies=[audited("cohorts.export")],
)
async def export_cohort(
    request: Request,
    services: Services,
    query: CohortQuery,
    format: Annotated[Literal["csv", "ndjson"], Query(description="csv (with a header line) or ndjson.")] = "csv",
) -> StreamingResponse:
    """One row per subject, streamed in chunks; ``X-Cohort-Count`` says how many rows follow."""
    db = services.connected_db()
    result = await run_cohort_query(db, query)
    audit_subjects(request, result.subject_ids)
    log.info("cohort export started", extra={"count": result.count, "format": format})
    return StreamingResponse(
        _rows(db, result.subject_ids, format),
        media_type=_MEDIA[format],
        headers={"X-Cohort-Count": str(result.count), "Content-Disposition": f'attachment; filename="cohort.{format}"'},
    )

"""BIDS export as a background job of the API (admin role).

``POST /exports/bids`` starts :func:`export.bids.export_bids` into
``<bids_export_root>/<name>/`` and answers 202 with the job; ``GET /exports/{job_id}``
shows its status, progress and, when done, the export report. Jobs are documents in the
``export_jobs`` collection, so their state survives the request and is visible to every
API process; the work itself runs in the process that accepted it. An export is
incremental and never leaves a half-written file, so a job interrupted by a restart (its
document stays ``running`` with a stale ``updated_at``) is resumed by starting it again
with the same name. One job per name runs at a time (409 otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.background import BackgroundTask

from api.audit import audit_before_acting, audit_subjects, audited
from api.auth import ADMIN, Principal
from api.errors import ApiError
from api.services import ApiServices, get_services
from cohortstream.cohort_query import CohortQuery, run_cohort_query
from cohortstream.subject_view import SubjectNotFoundError, resolve_subject_id
from cohortstream.subjects import SubjectIdentifierError

__all__ = ["BidsExportRequest", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/exports", tags=["exports"])
Services = Annotated[ApiServices, Depends(get_services)]
# Export name -> its task in this process (a strong reference: the loop keeps only weak ones).
_RUNNING: dict[str, asyncio.Task[None]] = {}


class BidsExportRequest(BaseModel):
    """What to export, and under which name in the export root."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Folder under the export root; exporting again to a name updates that export.",
    )
    query: CohortQuery | None = Field(None, description="Only the subjects of this cohort query.")
    subjects: list[str] | None = Field(
        None, min_length=1, max_length=10_000, description="Only these subjects (ids or identifiers)."
    )

    @model_validator(mode="after")
    def _one_selection(self) -> BidsExportRequest:
        if self.query is not None and self.subjects:
            raise ValueError("give either query or subjects, not both")
        return self


def _now() -> datetime:
    return datetime.now(UTC)


async def _selected_subjects(services: ApiServices, request: BidsExportRequest) -> list[str]:
    """The subject ids the export will write, resolved before it starts so the audit names them."""
    db = services.require_db()
    if request.subjects:
        ids = set()
        for text in request.subjects:
            try:
                ids.add(await resolve_subject_id(db, text))
            except SubjectIdentifierError as exc:
                raise ApiError(422, str(exc), "subjects") from exc
            except SubjectNotFoundError as exc:
                raise ApiError(404, "no such subject", "subjects") from exc
        return sorted(ids)
    return (await run_cohort_query(db, request.query or CohortQuery())).subject_ids


async def _run(services: ApiServices, job_id: str, request: BidsExportRequest) -> None:
    from export.bids import export_bids

    jobs = services.require_db()["export_jobs"]
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    last: asyncio.Future[Any] | None = None

    async def write(update: dict[str, Any], previous: asyncio.Future[Any] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # one after the other, in order
        await jobs.update_one({"_id": job_id}, update)

    def progress(stage: str, done: int, total: int) -> None:
        update = {"$set": {"progress": {"stage": stage, "done": done, "total": total}, "updated_at": _now()}}

        def schedule() -> None:
            nonlocal last
            last = asyncio.ensure_future(write(update, last))

        if threading.get_ident() == loop_thread:
            schedule()
        else:
            loop.call_soon_threadsafe(schedule)  # the exporter may report from a worker thread

    outdir = services.settings.bids_export_root / request.name
    try:
        report = await export_bids(
            services.settings, outdir, query=request.query, subjects=request.subjects, progress=progress
        )
        summary = report.to_dict()
        result = {
            "status": "done",
            "report": {
                "participants": len(summary["participants"]),
                "scans": len(summary["scans"]),
                "derivatives": len(summary["derivatives"]),
                "files_written": len(summary["files_written"]),
                "files_unchanged": summary["files_unchanged"],
                "files_removed": len(summary["files_removed"]),
                "skipped_series": summary["skipped_series"],
                "skipped_subjects": summary["skipped_subjects"],
                "warnings": summary["warnings"],
            },
        }
    except Exception as exc:  # the job records why; the API process goes on
        log.exception("BIDS export job failed", extra={"job_id": job_id})
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    if last is not None:
        await asyncio.gather(last, return_exceptions=True)  # every progress update is written first
    await jobs.update_one({"_id": job_id}, {"$set": {**result, "finished_at": _now(), "updated_at": _now()}})
    log.info("BIDS export job finished", extra={"job_id": job_id, "status": result["status"]})


@router.post(
    "/bids",
    status_code=202,
    summary="Start a BIDS export of the cohort (or a subset) as a background job",
    dependencies=[audited("exports.bids")],
)
async def start_bids_export(
    http_request: Request, services: Services, principal: Annotated[Principal, ADMIN], request: BidsExportRequest
) -> JSONResponse:
    jobs = services.require_db()["export_jobs"]
    current = _RUNNING.get(request.name)
    if current is not None and not current.done():
        raise ApiError(409, f"an export named {request.name!r} is running", "name")
    # The job exports exactly the subjects the audit event names: the selection is resolved
    # here, and the job starts only after the answer's audit was acknowledged (below).
    selected = await _selected_subjects(services, request)
    audit_subjects(http_request, selected)
    selection = request.model_dump(mode="json", exclude={"name"})
    if selected:
        request = request.model_copy(update={"query": None, "subjects": selected})
    job_id = str(uuid.uuid4())
    job = {
        "_id": job_id,
        "kind": "bids",
        "name": request.name,
        "status": "running",
        "requested_by": principal.name,
        "selection": selection,
        "progress": None,
        "started_at": _now(),
        "updated_at": _now(),
        "finished_at": None,
        "outdir": str(services.settings.bids_export_root / request.name),
    }
    # Recorded before the job exists: a refused audit leaves no job document behind.
    await audit_before_acting(http_request, 202)
    await jobs.insert_one(job)
    started = request

    async def start_job() -> None:
        _RUNNING[started.name] = asyncio.create_task(_run(services, job_id, started))
        log.info("BIDS export job started", extra={"job_id": job_id, "export_name": started.name})

    # A background task runs after the answer was sent, so after its audit was acknowledged:
    # when the audit trail is unavailable the answer is 503 and the export never starts.
    return JSONResponse(
        {"job_id": job_id, "status": "running", "outdir": job["outdir"]},
        status_code=202,
        background=BackgroundTask(start_job),
    )


@router.get("/{job_id}", summary="Status, progress and report of an export job")
async def get_export_job(
    services: Services, _principal: Annotated[Principal, ADMIN], job_id: Annotated[str, Path(max_length=64)]
) -> dict[str, Any]:
    job = await services.require_db()["export_jobs"].find_one({"_id": job_id})
    if job is None:
        raise ApiError(404, f"no export job {job_id!r}", "job_id")
    return {**{k: v for k, v in job.items() if k != "_id"}, "job_id": job["_id"]}

"""``/proxy/dicom/{qido,wado,stow}/…``: Orthanc's DICOMweb, same-origin for the viewer.

The OHIF build of the monailabel wheel reads studies from ``/proxy/dicom/qido`` and
``/proxy/dicom/wado`` on its own origin (MONAI Label's server layout) and sends no
``Authorization`` header. This router forwards those requests to Orthanc's
``/dicom-web/…`` with Orthanc's credentials added here, so the browser never sees them,
and with the caller checked first: a key header or the ``/login`` session cookie.
Reading (``qido``, ``wado``) needs the researcher role; storing (``stow``, how the viewer
saves a corrected SEG) needs annotator or admin.

Bodies are streamed both ways (a series can be hundreds of MB); ``Accept``,
``Content-Type`` and ``Content-Length`` go up, ``Content-Type``, ``Content-Length`` and
``Content-Encoding`` come back. Orthanc's own 401/403 (wrong server-side credentials)
become 502, so its challenge never reaches the browser.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.audit import audit_subjects, audited
from api.auth import BROWSER_ANNOTATOR, BROWSER_RESEARCHER, Principal
from api.errors import ApiError
from api.services import ApiServices, get_services
from cohortstream.audit import subjects_of_studies

__all__ = ["DicomWebService", "router", "upstream_path"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/proxy/dicom", tags=["dicomweb"])
Services = Annotated[ApiServices, Depends(get_services)]

_REQUEST_HEADERS = ("accept", "content-type", "content-length")
_RESPONSE_HEADERS = ("content-type", "content-length", "content-encoding")


class DicomWebService(StrEnum):
    """The three DICOMweb services, all served by Orthanc under ``/dicom-web/``."""

    qido = "qido"
    wado = "wado"
    stow = "stow"


def upstream_path(path: str) -> str:
    """Orthanc's route for ``path`` (below the service prefix); refuses ``..`` segments so
    a request cannot leave ``/dicom-web/``."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ApiError(400, "path: '.' and '..' segments are not allowed", "path")
    return "/dicom-web/" + "/".join(parts)


def study_in_path(path: str) -> str | None:
    """The StudyInstanceUID a DICOMweb path names (``studies/{uid}/...``), None for a search."""
    parts = [p for p in path.split("/") if p]
    return parts[1] if len(parts) >= 2 and parts[0] == "studies" else None


async def _forward(request: Request, services: ApiServices, path: str) -> StreamingResponse:
    study = study_in_path(path)
    # A study's data is audited with its subject; a search's answer cannot be known before
    # it streams, so its audit records the query's hash and no subject count.
    audit_subjects(request, await subjects_of_studies(services.require_db(), [study]) if study else None)
    client: httpx.AsyncClient = services.archive.client
    headers = {name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers}
    headers["accept-encoding"] = "identity"
    has_body = request.method == "POST"
    upstream = client.build_request(
        request.method,
        upstream_path(path),
        params=list(request.query_params.multi_items()),
        headers=headers,
        content=request.stream() if has_body else None,
    )
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TransportError as exc:
        log.error("Orthanc unreachable from the DICOMweb proxy", extra={"error": type(exc).__name__})
        raise ApiError(503, "DICOM archive unavailable, retry later") from exc
    if response.status_code in (401, 403):
        await response.aclose()
        log.error("Orthanc refused the proxy's credentials", extra={"status": response.status_code})
        raise ApiError(502, "the DICOM archive refused the server's credentials")
    out = {name: response.headers[name] for name in _RESPONSE_HEADERS if name in response.headers}

    async def body() -> AsyncIterator[bytes]:
        async for chunk in response.aiter_raw():
            yield chunk

    return StreamingResponse(
        body(), status_code=response.status_code, headers=out, background=BackgroundTask(response.aclose)
    )


@router.get(
    "/{service}/{path:path}",
    summary="DICOMweb read (QIDO-RS, WADO-RS) from the archive",
    dependencies=[audited("dicomweb.read")],
)
async def read(
    request: Request,
    services: Services,
    service: DicomWebService,
    path: str,
    _principal: Annotated[Principal, BROWSER_RESEARCHER],
) -> StreamingResponse:
    """Forward to Orthanc's ``/dicom-web/{path}`` (researcher key or session)."""
    return await _forward(request, services, path)


@router.post(
    "/{service}/{path:path}",
    summary="DICOMweb store (STOW-RS) or query POST to the archive",
    dependencies=[audited("dicomweb.store", hash_body=False)],
)
async def write(
    request: Request,
    services: Services,
    service: DicomWebService,
    path: str,
    _principal: Annotated[Principal, BROWSER_ANNOTATOR],
) -> StreamingResponse:
    """Forward to Orthanc's ``/dicom-web/{path}`` (annotator or admin key or session):
    storing a SEG is saving a correction."""
    return await _forward(request, services, path)

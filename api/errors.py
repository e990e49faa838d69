"""One error shape for every answer of the API: ``{"error": message, "field": name | null}``.

Clients (the review UI, scripts) show ``error`` and highlight ``field``; neither carries a
stack trace or a value from the request, only names. FastAPI's own 422 (a query parameter
out of range, a missing body field) is rewritten into the same shape so a client handles
one format.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cohortstream.errors import CohortStreamError

__all__ = ["ApiError", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


class ApiError(CohortStreamError):
    """An answer other than success, with its HTTP status and the request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    """The JSON error answer."""
    return JSONResponse({"error": message, "field": field}, status_code=status)


def _field_of(loc: tuple[object, ...] | list[object]) -> str | None:
    # FastAPI locations look like ("query", "limit") or ("body", "reason"); the first
    # element says where, the rest is the path inside it.
    parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request"))
        return error_response(422, f"{field}: {message}" if field else message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in the API", exc_info=exc, extra={"path": request.url.path})
        return error_response(500, "internal error")

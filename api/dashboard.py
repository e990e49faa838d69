"""``GET /dashboard``: the cohort at a glance in a browser, and a cohort builder.

The page is static HTML, JavaScript and CSS (``api/static/``) and holds **no data**, so
it is served without a key. It asks for an API key once, keeps it in the tab's
``sessionStorage`` (gone when the tab closes; never in a cookie, so no CSRF surface and
nothing is sent to the server but the ``Authorization: Bearer`` header of the JSON
calls) and reads the same endpoints any client reads, with the same access control:

- ``GET /statistics`` — counts, age/sex distribution, questionnaire completion,
  annotation progress, ingestion per day;
- ``GET /subjects`` (pages of 500, at most :data:`MATRIX_MAX_SUBJECTS` subjects shown) —
  the modality × subject matrix;
- ``POST /cohorts/query`` and ``POST /cohorts/export?format=csv`` — the cohort builder
  and its download.

A 401 drops the stored key and asks again. Plots are drawn with Plotly.js from the
installed ``plotly`` Python package (``plotly/package_data/plotly.min.js``), served here
at ``/dashboard/static/plotly.min.js``: nothing is fetched from the internet. Without
the package the page still shows every number, in tables, and says plots are
unavailable. None of these routes is in the OpenAPI schema (they are not API endpoints).
"""

from __future__ import annotations

from importlib import resources
from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from api.errors import ApiError

__all__ = ["MATRIX_MAX_SUBJECTS", "STATIC_FILES", "plotly_js_path", "router"]

router = APIRouter(tags=["dashboard"], include_in_schema=False)

#: The matrix shows at most this many subjects (the counts above it cover everyone).
MATRIX_MAX_SUBJECTS = 2000

_STATIC = Path(str(resources.files("api") / "static"))
#: The page's own files, by name (nothing else under static/ is served).
STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

# The page loads scripts and styles from this app only; Plotly sets inline styles and
# draws images from data: URIs; downloads are blob: URLs made by the page.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def plotly_js_path() -> Path | None:
    """``plotly.min.js`` of the installed ``plotly`` package; None without the package."""
    spec = find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    """The page (no data in it; it asks for a key and calls the JSON API)."""
    html = (_STATIC / "dashboard.html").read_text(encoding="utf-8")
    html = html.replace("{{MATRIX_MAX_SUBJECTS}}", str(MATRIX_MAX_SUBJECTS))
    return HTMLResponse(html, headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})


@router.get("/dashboard/static/plotly.min.js")
async def plotly_js() -> Response:
    """Plotly.js from the installed ``plotly`` package (no CDN)."""
    path = plotly_js_path()
    if path is None:
        raise ApiError(404, "plotly is not installed: the dashboard shows tables only")
    return FileResponse(
        path,
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/dashboard/static/{name}")
async def static_file(name: str) -> Response:
    """The page's script and stylesheet."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ApiError(404, "no such file")
    return FileResponse(
        _STATIC / name,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )

"""``/ohif/``: the OHIF viewer with its MONAI Label panel, served by the API.

The build comes from the pinned ``monailabel`` 0.8.5 wheel (files only, installed by
``deploy/install_ohif.sh`` into the cache, licence notices beside it); it hard-codes the
mount point ``/ohif/``, reads images through :mod:`api.dicomweb_proxy` and finds its MONAI
Label server in the cookie ``MONAILABEL_SERVER_URL``, which is set here, to this API's
base URL, whenever the page is served. Any path that is not a file of the build answers
``index.html`` (the viewer routes in the browser, e.g. ``/ohif/monai-label?StudyInstanceUIDs=…``).

The viewer needs a researcher key or the ``/login`` session; a browser without one is
sent to ``/login`` and back.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.auth import AuthError, browser_authenticated
from api.errors import ApiError
from api.services import ApiServices, get_services
from cohortstream.settings import Settings

__all__ = ["OHIF_VERSION", "SERVER_URL_COOKIE", "ohif_dir", "resolve", "router"]

router = APIRouter(tags=["viewer"], include_in_schema=False)
Services = Annotated[ApiServices, Depends(get_services)]

OHIF_VERSION = "monailabel-0.8.5"
"""The wheel the build comes from (the cache folder's name)."""
SERVER_URL_COOKIE = "MONAILABEL_SERVER_URL"

_TYPES = {".js": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".css": "text/css; charset=utf-8"}


def ohif_dir(settings: Settings) -> Path:
    """Where the build is: ``ohif_dir`` or the cache folder ``deploy/install_ohif.sh`` fills."""
    if settings.ohif_dir is not None:
        return settings.ohif_dir
    cache = os.environ.get("COHORTSTREAM_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cohortstream"
    )
    return Path(cache) / "ohif" / OHIF_VERSION / "ohif"


def resolve(root: Path, path: str) -> Path:
    """The file of the build for ``path``, or ``index.html`` when there is none (never a
    file outside ``root``)."""
    base = root.resolve()
    if path:
        candidate = (base / path).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    return base / "index.html"


@router.get("/ohif")
async def ohif_root() -> Response:
    """The build expects the trailing slash."""
    return RedirectResponse("/ohif/", status_code=307)


@router.get("/ohif/{path:path}")
async def ohif(request: Request, services: Services, path: str) -> Response:
    """A file of the build, or ``index.html`` (with the ``MONAILABEL_SERVER_URL`` cookie)."""
    try:
        await browser_authenticated(request)
    except AuthError:
        if "text/html" in request.headers.get("accept", ""):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        raise
    root = ohif_dir(services.settings)
    if not (root / "index.html").is_file():
        raise ApiError(404, f"the OHIF viewer is not installed in {root}: run deploy/install_ohif.sh (make up does)")
    file = resolve(root, path)
    if file.name == "index.html":
        response = FileResponse(file, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})
        # Read by the viewer's JavaScript (it unescape()s the value), so not HttpOnly; no
        # secret in it. Percent-encoded: a raw URL would be sent quoted, which the viewer
        # cannot parse.
        response.set_cookie(SERVER_URL_COOKIE, quote(str(request.base_url), safe=""), path="/", samesite="strict")
        return response
    media_type = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return FileResponse(file, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})

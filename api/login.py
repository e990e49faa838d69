"""``/login`` and ``/logout``: a browser trades an API key for a session cookie.

The OHIF viewer cannot send ``Authorization`` headers, so ``GET /login`` shows a small
form; ``POST /login`` checks the key as any request would (:class:`api.auth.Authenticator`),
opens a session (:mod:`api.sessions`) and sets its token as an HttpOnly, SameSite=Strict
cookie (``Secure`` over HTTPS) valid for ``COHORTSTREAM_API_SESSION_TTL_S``, then redirects
to ``next`` (a path on this server; default ``/ohif/``). ``POST /logout`` closes the
session. The key itself is never put in a cookie or in the page.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.auth import SESSION_COOKIE, Authenticator, AuthError, TooManyAttemptsError, source_address
from api.services import ApiServices, get_services
from api.sessions import SessionStore

__all__ = ["router", "safe_next"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["login"], include_in_schema=False)
Services = Annotated[ApiServices, Depends(get_services)]

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cohortstream: log in</title>
<style>body{{font-family:sans-serif;max-width:28rem;margin:4rem auto}}input{{width:100%;padding:.4rem}}
.error{{color:#b00}}</style></head>
<body><h1>cohortstream</h1>
<p>Log in with your API key to use the OHIF viewer and its MONAI Label panel.</p>
{error}
<form method="post" action="/login">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" required>
<input type="hidden" name="next" value="{next}">
<p><button id="login" type="submit">Log in</button></p>
</form></body></html>
"""


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this server, else ``/ohif/`` (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/ohif/"
    return target


def _page(next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
    message = f'<p class="error" id="error">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(
        _PAGE.format(error=message, next=html.escape(safe_next(next_path), quote=True)),
        status_code=status,
        headers=_HEADERS,
    )


@router.get("/login", response_class=HTMLResponse)
async def login_page(next: str = "/ohif/") -> HTMLResponse:
    """The form (holds no data, so it needs no credential)."""
    return _page(next)


@router.post("/login")
async def login(
    request: Request, services: Services, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/ohif/"
) -> Response:
    """Check the key, open a session, set its cookie, redirect to ``next``."""
    authenticator: Authenticator = request.app.state.authenticator
    try:
        principal = await authenticator.authenticate(key.strip() or None, source_address(request))
    except TooManyAttemptsError as exc:
        refused = _page(next, "Too many failed attempts from this address; wait a minute.", status=429)
        refused.headers.update(exc.headers)
        return refused
    except AuthError:
        return _page(next, "That key is unknown, revoked or mistyped.", status=401)
    assert principal.key_id is not None  # principals made from stored keys have one
    token = await SessionStore(services.require_db()).open(principal.key_id, services.settings.api_session_ttl_s)
    log.info("browser session opened", extra={"key_id": principal.key_id, "role": principal.role.value})
    response = RedirectResponse(safe_next(next), status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(services.settings.api_session_ttl_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, services: Services) -> Response:
    """Close the session (if any) and drop its cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await SessionStore(services.require_db()).close(token)
        request.app.state.authenticator.forget_all()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response

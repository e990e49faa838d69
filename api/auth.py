"""Access control of the API: who may call what.

Three roles: ``researcher`` (read-only: subjects, cohorts, statistics, annotations,
MONAI Label reads, the viewer, metrics), ``annotator`` (a researcher who may also run
inference, active learning and save corrections: what annotating in the viewer needs)
and ``admin`` (everything, also accepting/rejecting suggestions, exports, syncs). Every
endpoint except ``/healthz``, ``/readyz`` and the login page requires a credential.

Routers declare what they need with the dependencies below, e.g.
``@router.get("/subjects", dependencies=[RESEARCHER])`` or, to know who calls,
``principal: Annotated[Principal, RESEARCHER]``.

Credentials are API keys (:mod:`api.keys`, created with ``cohortstream api-keys create``)
sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. A missing, malformed,
unknown or revoked key answers **401** with ``WWW-Authenticate: Bearer``; a valid key
whose role is too low answers **403**. Both use the API's error shape.

Browsers cannot send that header from the OHIF viewer, so the viewer's routes (``/ohif/``,
the DICOMweb proxy, the MONAI Label routes) also accept the session cookie of
:mod:`api.sessions`, made at ``/login`` from a key (dependencies ``BROWSER_*``). The
cookie is HttpOnly and SameSite=Strict (another site cannot make the browser send it);
other routes ignore it, so the dashboard and scripts keep using the header only.

Failed key attempts are counted per source address (:mod:`api.rate_limit`): past
``COHORTSTREAM_API_AUTH_FAILURES_PER_MINUTE`` an address gets **429** with ``Retry-After``
for unverified keys, before any lookup or hash.

Verified keys are cached in memory for ``COHORTSTREAM_API_KEY_CACHE_TTL_S`` seconds
(default 30) so a request does not rerun the slow hash: a revoked key keeps working in
an API process for at most that long. Failures are never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from api.errors import ApiError, error_response
from api.keys import KeyFormatError, KeyStore, parse_key, verify_secret
from api.principals import Principal, Role
from api.rate_limit import FailureLimiter
from api.sessions import COOKIE as SESSION_COOKIE
from api.sessions import SessionStore

__all__ = [
    "ADMIN",
    "ANNOTATOR",
    "BROWSER_ANNOTATOR",
    "BROWSER_RESEARCHER",
    "RESEARCHER",
    "SESSION_COOKIE",
    "AuthError",
    "Authenticator",
    "Principal",
    "Role",
    "TooManyAttemptsError",
    "authenticated",
    "browser_authenticated",
    "install_auth_handlers",
    "key_store_lookup",
    "require",
    "session_store_lookup",
    "source_address",
]

log = logging.getLogger(__name__)

KeyLookup = Callable[[str], Awaitable[dict[str, Any] | None]]
"""Finds the stored document of an unrevoked key by its id (None: unknown or revoked)."""
SessionLookup = Callable[[str], Awaitable[str | None]]
"""Finds the key id of an unexpired browser session by its token (None: unknown or expired)."""

_CACHE_MAX = 1024


class AuthError(ApiError):
    """401 or 403, with the ``WWW-Authenticate`` challenge a 401 must carry."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, "Authorization" if status == 401 else None)
        self.headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}


class TooManyAttemptsError(AuthError):
    """429: this source address failed too many key attempts; ``Retry-After`` says when to retry."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(429, f"too many failed API-key attempts from this address; retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


class CredentialStoreUnavailable(ApiError):
    """The key collection cannot be read: 503, so a client retries rather than drops its key."""

    def __init__(self) -> None:
        super().__init__(503, "credential store unavailable, retry later")


def _unauthorized(message: str) -> AuthError:
    return AuthError(401, message)


def presented_credential(request: Request) -> str | None:
    """The key in ``Authorization: Bearer`` or ``X-API-Key``; None when neither is sent."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("Authorization: expected 'Bearer <API key>'")
        return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    """Verifies presented keys against the store, with a short cache of successes."""

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        cache_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        session_lookup: SessionLookup | None = None,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self._lookup = lookup
        self._limiter = limiter
        self._session_lookup = session_lookup
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    def _cached(self, fingerprint: bytes) -> Principal | None:
        hit = self._cache.get(fingerprint)
        if hit is None:
            return None
        principal, expires = hit
        if self._clock() >= expires:
            del self._cache[fingerprint]
            return None
        return principal

    def _remember(self, fingerprint: bytes, principal: Principal) -> None:
        if self._ttl <= 0:
            return
        if len(self._cache) >= _CACHE_MAX:
            now = self._clock()
            for stale in [k for k, (_, exp) in self._cache.items() if exp <= now] or list(self._cache)[
                : _CACHE_MAX // 4
            ]:
                del self._cache[stale]
        self._cache[fingerprint] = (principal, self._clock() + self._ttl)

    def forget_all(self) -> None:
        """Drop the cache (revocation takes effect at once in this process)."""
        self._cache.clear()

    def _check_source(self, source: str | None) -> None:
        if self._limiter is None or source is None:
            return
        wait = self._limiter.admit(source)
        if wait is None:
            return
        if self._limiter.first_refusal(source):
            log.warning("API key attempts rate-limited", extra={"source": source, "retry_after_s": wait})
        raise TooManyAttemptsError(wait)

    def _failed(self, source: str | None, reason: str, key_id: str | None = None) -> AuthError:
        # The attempt was counted when it was admitted (_check_source).
        log.warning("API key refused", extra={"key_id": key_id, "source": source, "reason": reason})
        return _unauthorized(f"Authorization: {reason}")

    async def authenticate(self, credential: str | None, source: str | None = None) -> Principal:
        """The principal of ``credential``; :class:`AuthError` (401) when it is not a valid key,
        :class:`TooManyAttemptsError` (429) when ``source`` failed too often."""
        if credential is None:
            raise _unauthorized("Authorization: an API key is required (Authorization: Bearer <key>)")
        # The cache is keyed by a fast digest of the whole key, so a wrong secret with a
        # known key id never hits it.
        fingerprint = hashlib.sha256(credential.encode()).digest()
        cached = self._cached(fingerprint)
        if cached is not None:
            return cached
        self._check_source(source)
        try:
            parsed = parse_key(credential)
        except KeyFormatError as exc:
            raise self._failed(source, "not a cohortstream API key") from exc
        try:
            doc = await self._lookup(parsed.key_id)
        except PyMongoError as exc:
            log.error("cannot read the API keys", extra={"key_id": parsed.key_id, "error": type(exc).__name__})
            if self._limiter is not None and source is not None:
                self._limiter.forgive(source)  # not the caller's failure
            raise CredentialStoreUnavailable() from exc
        principal = _principal_of(doc) if doc is not None else None
        if principal is None or not await asyncio.to_thread(verify_secret, parsed.secret, str(doc.get("hash", ""))):  # type: ignore[union-attr]
            raise self._failed(source, "unknown or revoked API key", parsed.key_id)
        if self._limiter is not None and source is not None:
            self._limiter.forgive(source)
        self._remember(fingerprint, principal)
        return principal

    async def authenticate_session(self, token: str) -> Principal:
        """The principal of a browser session's key; :class:`AuthError` (401) when the
        session is unknown or expired, or its key was revoked."""
        fingerprint = b"session:" + hashlib.sha256(token.encode()).digest()
        cached = self._cached(fingerprint)
        if cached is not None:
            return cached
        if self._session_lookup is None:
            raise _unauthorized("Authorization: sessions are not enabled")
        try:
            key_id = await self._session_lookup(token)
            doc = await self._lookup(key_id) if key_id is not None else None
        except PyMongoError as exc:
            log.error("cannot read the sessions", extra={"error": type(exc).__name__})
            raise CredentialStoreUnavailable() from exc
        principal = _principal_of(doc) if doc is not None else None
        if principal is None:
            raise _unauthorized("Authorization: session expired or its key revoked; log in again at /login")
        self._remember(fingerprint, principal)
        return principal


def _principal_of(doc: dict[str, Any]) -> Principal | None:
    try:
        return Principal(name=str(doc["name"]), role=Role(doc["role"]), key_id=str(doc["_id"]))
    except (KeyError, ValueError):
        return None


def key_store_lookup(request_app: FastAPI) -> KeyLookup:
    """The lookup of the application's own database (opened by its lifespan)."""

    async def lookup(key_id: str) -> dict[str, Any] | None:
        services = request_app.state.services
        if services.db is None:
            raise CredentialStoreUnavailable()
        return await KeyStore(services.db).find_active(key_id)

    return lookup


def session_store_lookup(request_app: FastAPI) -> SessionLookup:
    """The session lookup of the application's own database."""

    async def lookup(token: str) -> str | None:
        services = request_app.state.services
        if services.db is None:
            raise CredentialStoreUnavailable()
        return await SessionStore(services.db).key_id(token)

    return lookup


async def authenticated(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (any role), or 401."""
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate(presented_credential(request), source_address(request))
    request.state.principal = principal
    return principal


def source_address(request: Request) -> str | None:
    """The caller's IP address (the peer of the connection; behind a proxy, run uvicorn
    with ``--proxy-headers`` so it is the client's)."""
    return request.client.host if request.client else None


async def browser_authenticated(request: Request) -> Principal:
    """FastAPI dependency: the caller by its key header or, without one, by the session
    cookie of ``/login`` (the viewer's routes only)."""
    if request.headers.get("authorization") or request.headers.get("x-api-key"):
        return await authenticated(request)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise _unauthorized("Authorization: an API key or a session is required (log in at /login)")
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate_session(token)
    request.state.principal = principal
    return principal


def require(role: Role, *, browser: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency function that answers 403 unless the caller's role allows ``role``;
    ``browser``: the session cookie is accepted too."""
    identify = browser_authenticated if browser else authenticated

    # A default, not Annotated[...]: string annotations cannot see the local ``identify``.
    async def dependency(principal: Principal = Depends(identify)) -> Principal:  # noqa: B008
        if not principal.role.allows(role):
            log.info(
                "role too low", extra={"key_id": principal.key_id, "role": principal.role.value, "needed": role.value}
            )
            raise AuthError(403, f"this needs the {role.value} role; the key has {principal.role.value}")
        return principal

    dependency.__name__ = f"require_{role.value}{'_browser' if browser else ''}"
    return dependency


def install_auth_handlers(app: FastAPI) -> None:
    """Answer :class:`AuthError` in the API's error shape, with its challenge header."""

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        response = error_response(exc.status, exc.message, exc.field)
        response.headers.update(exc.headers)
        return response


RESEARCHER: Any = Depends(require(Role.RESEARCHER))
"""Dependency: any valid key (researcher or admin); returns the :class:`Principal`."""
ANNOTATOR: Any = Depends(require(Role.ANNOTATOR))
"""Dependency: an annotator or admin key; returns the :class:`Principal`."""
ADMIN: Any = Depends(require(Role.ADMIN))
"""Dependency: an admin key; returns the :class:`Principal`."""
BROWSER_RESEARCHER: Any = Depends(require(Role.RESEARCHER, browser=True))
"""Dependency: any valid key or browser session (the viewer's read routes)."""
BROWSER_ANNOTATOR: Any = Depends(require(Role.ANNOTATOR, browser=True))
"""Dependency: an annotator or admin key or session (inference and saves from the viewer)."""

"""Browser sessions: what the ``/login`` page hands out in exchange for an API key.

The OHIF viewer sends no ``Authorization`` header, so a browser needs a cookie. The
cookie holds a random session token (256 bits), never the API key: the collection
``api_sessions`` stores only the token's SHA-256 (a copy of the database grants
nothing), the key id it was made from, and when it expires. Every request re-checks the
key (:class:`api.auth.Authenticator`), so revoking the key ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from cohortstream.mongo import AsyncDatabase

__all__ = ["COLLECTION", "COOKIE", "SessionStore"]

COLLECTION = "api_sessions"
COOKIE = "cohortstream_session"
"""Name of the HttpOnly, SameSite=Strict cookie that carries the token."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """The ``api_sessions`` collection: open, look up and close sessions."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._sessions = db[COLLECTION]

    async def open(self, key_id: str, ttl_s: float) -> str:
        """A new session of key ``key_id``; returns the token (the only copy)."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        await self._sessions.insert_one(
            {"_id": _digest(token), "key_id": key_id, "created_at": now, "expires_at": now + timedelta(seconds=ttl_s)}
        )
        return token

    async def key_id(self, token: str) -> str | None:
        """The key id of an unexpired session, or None (unknown or expired)."""
        doc: dict[str, Any] | None = await self._sessions.find_one({"_id": _digest(token)})
        if doc is None:
            return None
        expires = doc["expires_at"]
        if expires.tzinfo is None:  # MongoDB hands back naive UTC datetimes
            expires = expires.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            await self._sessions.delete_one({"_id": doc["_id"]})
            return None
        return str(doc["key_id"])

    async def close(self, token: str) -> None:
        """Forget the session (logout)."""
        await self._sessions.delete_one({"_id": _digest(token)})

"""API keys: their format, how they are hashed, and the MongoDB collection that holds them.

A key is ``cs_<key id>_<secret>``: the key id (12 hex digits) is the document's ``_id``
in the collection ``api_keys`` and may be shown and logged; the secret (43 URL-safe
characters, 256 random bits) is shown once, when the key is created, and never stored.
Documents hold a PBKDF2-HMAC-SHA256 hash with a per-key salt, so a copy of the database
does not grant access; verification compares in constant time.

The key id makes lookup one ``find_one`` by ``_id`` (no scan over hashes), and the
prefix ``cs_`` lets secret scanners recognise a leaked key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.principals import Role
from cohortstream.errors import CohortStreamError
from cohortstream.mongo import AsyncDatabase

__all__ = [
    "COLLECTION",
    "KEY_PREFIX",
    "ApiKeyError",
    "IssuedKey",
    "KeyFormatError",
    "KeyStore",
    "ParsedKey",
    "UnknownKeyError",
    "generate_key",
    "hash_secret",
    "parse_key",
    "verify_secret",
]

COLLECTION = "api_keys"
KEY_PREFIX = "cs"
PBKDF2_ITERATIONS = 120_000
"""Iterations of new hashes (stored with each hash, so raising it later keeps old keys valid).
The secrets are 256 random bits, so the stretching only guards against a weak future
format; the API caches verified keys so requests do not pay for it each time."""

_KEY_RE = re.compile(r"^cs_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")


class ApiKeyError(CohortStreamError):
    """Base of the API key errors."""


class KeyFormatError(ApiKeyError, ValueError):
    """The text is not a cohortstream API key (the message never repeats the text)."""


class UnknownKeyError(ApiKeyError, LookupError):
    """No key with this id exists."""


@dataclass(frozen=True)
class ParsedKey:
    """A presented key split into its public id and its secret."""

    key_id: str
    secret: str


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key: ``key`` is the only copy of the secret."""

    key_id: str
    key: str
    name: str
    role: Role


def parse_key(text: str) -> ParsedKey:
    """Split ``cs_<id>_<secret>``; :class:`KeyFormatError` when ``text`` is not one."""
    match = _KEY_RE.match(text.strip())
    if match is None:
        raise KeyFormatError("not a cohortstream API key (expected cs_<12 hex digits>_<43 characters>)")
    return ParsedKey(key_id=match[1], secret=match[2])


def generate_key() -> ParsedKey:
    """A fresh key id and secret from the OS's random source."""
    return ParsedKey(key_id=secrets.token_hex(6), secret=secrets.token_urlsafe(32))


def format_key(parsed: ParsedKey) -> str:
    """The key as clients send it."""
    return f"{KEY_PREFIX}_{parsed.key_id}_{parsed.secret}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_secret(secret: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` of ``secret`` with a fresh salt."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the stored hash; constant time in the secret's content."""
    try:
        algorithm, iterations, salt, digest = stored.split("$")
        if algorithm != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha256", secret.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 256:
        raise ApiKeyError("name: 1 to 256 characters")
    return name


def _check_key_id(key_id: str) -> str:
    if not _KEY_ID_RE.match(key_id):
        raise KeyFormatError("key id: 12 hex digits (as `cohortstream api-keys list` shows)")
    return key_id


class KeyStore:
    """The ``api_keys`` collection: create, list, revoke, and verify presented keys."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._keys = db[COLLECTION]

    async def create(self, name: str, role: Role) -> IssuedKey:
        """Store a new key's hash and return the key itself (the only time it exists)."""
        role = Role(role)
        parsed = generate_key()
        await self._keys.insert_one(
            {
                "_id": parsed.key_id,
                "name": _check_name(name),
                "role": role.value,
                "hash": hash_secret(parsed.secret),
                "created_at": datetime.now(UTC),
                "revoked_at": None,
            }
        )
        return IssuedKey(key_id=parsed.key_id, key=format_key(parsed), name=name.strip(), role=role)

    async def list(self) -> list[dict[str, Any]]:
        """Every key without its hash, oldest first."""
        cursor = self._keys.find({}, {"hash": 0}).sort("created_at", 1)
        return [doc async for doc in cursor]

    async def revoke(self, key_id: str) -> bool:
        """Mark the key revoked; False when it already was. :class:`UnknownKeyError` if absent."""
        _check_key_id(key_id)
        result = await self._keys.update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": datetime.now(UTC)}}
        )
        if result.matched_count:
            return True
        if await self._keys.count_documents({"_id": key_id}, limit=1) == 0:
            raise UnknownKeyError(f"no API key {key_id}")
        return False

    async def find_active(self, key_id: str) -> dict[str, Any] | None:
        """The stored document of an unrevoked key, or None."""
        return await self._keys.find_one({"_id": key_id, "revoked_at": None})

"""Who calls the API: the roles and the principal a credential stands for.

Kept apart from :mod:`api.auth` (the FastAPI dependencies) so the key store and the CLI
can use them without importing the web layer; ``api.auth`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Principal", "Role"]


class Role(StrEnum):
    """What a key may do; ``admin`` includes everything ``researcher`` may."""

    RESEARCHER = "researcher"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return self is Role.ADMIN or needed is Role.RESEARCHER


@dataclass(frozen=True)
class Principal:
    """The caller, as identified by its credential (never the secret itself)."""

    name: str
    role: Role
    key_id: str | None = None
    """The key's public id (safe to log), None for principals not made from a stored key."""

"""Who calls the API: the roles and the principal a credential stands for.

Kept apart from :mod:`api.auth` (the FastAPI dependencies) so the key store and the CLI
can use them without importing the web layer; ``api.auth`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Principal", "Role"]


class Role(StrEnum):
    """What a key may do. Ordered: ``annotator`` may do what ``researcher`` may, plus run
    inference and save corrections (the viewer's work); ``admin`` may do everything
    (also accept/reject, exports, syncs). The annotator role exists so people who only
    annotate in the viewer do not need an admin key."""

    RESEARCHER = "researcher"
    ANNOTATOR = "annotator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.RESEARCHER: 0, Role.ANNOTATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """The caller, as identified by its credential (never the secret itself)."""

    name: str
    role: Role
    key_id: str | None = None
    """The key's public id (safe to log), None for principals not made from a stored key."""

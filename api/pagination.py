"""Cursor pagination over the ``annotations`` view, independent of any web framework.

Why cursors and not ``skip``: the views agent inserts and updates suggestions while a
reviewer pages through them, and ``skip`` then repeats or drops documents; a cursor
resumes after the last document seen. Two orders exist, each a total order so the cursor
is exact:

- ``id``: ``_id`` ascending (stable, the default of the list);
- ``uncertainty``: ``uncertainty`` descending, then ``_id`` ascending (the review queue:
  the suggestions the model is least sure about first). Documents without an uncertainty
  sort after every number, as MongoDB sorts null lowest.

A cursor is opaque to clients (URL-safe base64 of a small JSON object) and names its
order, so a cursor of one order given to the other is refused rather than misread.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cohortstream.errors import CohortStreamError

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Cursor",
    "CursorError",
    "SortOrder",
    "after_filter",
    "page",
    "sort_spec",
]

#: Largest page a client may ask for; beyond it the API answers 422 naming ``limit``.
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class CursorError(CohortStreamError, ValueError):
    """A cursor that this API did not make, or made for another order."""


class SortOrder(StrEnum):
    """The orders a list can be paged in."""

    ID = "id"
    UNCERTAINTY = "uncertainty"


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: the sort key of its last document."""

    order: SortOrder
    last_id: str
    last_uncertainty: float | None = None

    def encode(self) -> str:
        """The opaque text handed to clients as ``next_cursor``."""
        payload: dict[str, Any] = {"o": self.order.value, "id": self.last_id}
        if self.order is SortOrder.UNCERTAINTY:
            payload["u"] = self.last_uncertainty
        raw = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str, order: SortOrder) -> Cursor:
        """Read a cursor made by :meth:`encode` for ``order``; :class:`CursorError` otherwise."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise CursorError("cursor is not one this API returned") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise CursorError("cursor is not one this API returned")
        if payload.get("o") != order.value:
            raise CursorError(f"cursor was made for sort={payload.get('o')!r}, not sort={order.value!r}")
        uncertainty = payload.get("u")
        if order is SortOrder.UNCERTAINTY and uncertainty is not None:
            if (
                isinstance(uncertainty, bool)
                or not isinstance(uncertainty, int | float)
                or not math.isfinite(uncertainty)
            ):
                raise CursorError("cursor is not one this API returned")
            uncertainty = float(uncertainty)
        return cls(order, payload["id"], uncertainty if order is SortOrder.UNCERTAINTY else None)


def sort_spec(order: SortOrder) -> list[tuple[str, int]]:
    """The MongoDB sort for ``order`` (``_id`` last, so the order is total)."""
    if order is SortOrder.UNCERTAINTY:
        return [("uncertainty", -1), ("_id", 1)]
    return [("_id", 1)]


def after_filter(cursor: Cursor) -> dict[str, Any]:
    """The filter that selects the documents after ``cursor`` in its order."""
    if cursor.order is SortOrder.ID:
        return {"_id": {"$gt": cursor.last_id}}
    if cursor.last_uncertainty is None:
        # Already among the documents without an uncertainty: they sort by _id alone.
        return {"uncertainty": None, "_id": {"$gt": cursor.last_id}}
    return {
        "$or": [
            {"uncertainty": {"$lt": cursor.last_uncertainty}},
            {"uncertainty": cursor.last_uncertainty, "_id": {"$gt": cursor.last_id}},
            {"uncertainty": None},
        ]
    }


def _cursor_after(doc: Mapping[str, Any], order: SortOrder) -> Cursor:
    uncertainty = doc.get("uncertainty")
    return Cursor(order, str(doc["_id"]), float(uncertainty) if uncertainty is not None else None)


def page(docs: Sequence[Mapping[str, Any]], limit: int, order: SortOrder) -> tuple[list[Mapping[str, Any]], str | None]:
    """Split ``docs`` (fetched with ``limit + 1``) into the page and the next cursor.

    Fetching one document more than asked tells whether another page exists, so the
    last page carries no cursor and a client never asks for an empty page.
    """
    items = list(docs[:limit])
    if len(docs) > limit and items:
        return items, _cursor_after(items[-1], order).encode()
    return items, None

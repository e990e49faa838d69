"""Read-only queries of the ``annotations`` view (and of the DICOM views they point into).

The API reads what the views agent wrote and never writes these collections itself: a
review is an event, folded into the view by the agent (see :mod:`api.reviews`). Queries
stay within the MongoDB API that both the local server and MongoDB 7 serve (find with
sort/limit, count, distinct; no aggregation stages beyond that).

Useful indexes for the writer to create: ``(status, uncertainty, _id)`` for the queue,
``study_instance_uid``, ``series_instance_uid`` and ``model_name`` for the filters.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.pagination import Cursor, SortOrder, after_filter, page, sort_spec
from api.reviews import AnnotationStatus
from api.viewer_links import ohif_study_url
from cohortstream.mongo import AsyncDatabase

__all__ = ["AnnotationFilters", "AnnotationPage", "AnnotationStore", "public_document"]


@dataclass(frozen=True)
class AnnotationFilters:
    """Equality filters of the list; None leaves a field unfiltered."""

    status: AnnotationStatus | None = None
    model_name: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None

    def query(self) -> dict[str, Any]:
        """The MongoDB filter."""
        query: dict[str, Any] = {}
        if self.status is not None:
            query["status"] = self.status.value
        if self.model_name is not None:
            query["model_name"] = self.model_name
        if self.study_instance_uid is not None:
            query["study_instance_uid"] = self.study_instance_uid
        if self.series_instance_uid is not None:
            query["series_instance_uid"] = self.series_instance_uid
        return query


@dataclass(frozen=True)
class AnnotationPage:
    """One page of suggestions and the cursor of the next page (None on the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def public_document(doc: Mapping[str, Any], *, with_history: bool = True) -> dict[str, Any]:
    """An ``annotations`` document as the API shows it: ``annotation_id`` instead of ``_id``,
    and ``viewer_url``, the study in the OHIF viewer (a path on this API)."""
    out = {k: v for k, v in doc.items() if k != "_id" and (with_history or k != "history")}
    out.setdefault("annotation_id", str(doc["_id"]))
    if doc.get("study_instance_uid"):
        out["viewer_url"] = ohif_study_url(str(doc["study_instance_uid"]))
    if with_history:
        out.setdefault("history", [])
    return out


def _combine(*filters: Mapping[str, Any]) -> dict[str, Any]:
    parts = [dict(f) for f in filters if f]
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


class AnnotationStore:
    """Queries of one database's ``annotations``, ``series`` and ``instances`` views."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db
        self._annotations = db["annotations"]

    async def find_page(
        self, filters: AnnotationFilters, order: SortOrder, limit: int, cursor: Cursor | None = None
    ) -> AnnotationPage:
        """Suggestions matching ``filters``, in ``order``, after ``cursor``; without history."""
        query = _combine(filters.query(), after_filter(cursor) if cursor else {})
        found = (
            await self._annotations.find(query, {"history": 0})
            .sort(sort_spec(order))
            .limit(limit + 1)
            .to_list(limit + 1)
        )
        items, next_cursor = page(found, limit, order)
        return AnnotationPage([public_document(doc, with_history=False) for doc in items], next_cursor)

    async def get(self, annotation_id: str) -> dict[str, Any] | None:
        """The document of ``annotation_id`` (with history), None if unknown or not a UUID."""
        try:
            canonical = str(uuid.UUID(annotation_id))
        except ValueError:
            return None
        return await self._annotations.find_one({"_id": canonical})

    async def highest_uncertainty_pending(self) -> dict[str, Any] | None:
        """The suggestion still waiting for review that the model is least sure of."""
        found = (
            await self._annotations.find({"status": AnnotationStatus.SUGGESTED.value}, {"history": 0})
            .sort(sort_spec(SortOrder.UNCERTAINTY))
            .limit(1)
            .to_list(1)
        )
        return found[0] if found else None

    async def series(self, series_instance_uid: str) -> dict[str, Any] | None:
        """The ``series`` view document of a series."""
        return await self._db["series"].find_one({"_id": series_instance_uid})

    async def instances_in_series(self, sop_instance_uids: frozenset[str], series_instance_uid: str) -> bool:
        """Whether any of these SOP instances is known to belong to the series."""
        found = await self._db["instances"].find_one(
            {"_id": {"$in": sorted(sop_instance_uids)}, "series_instance_uid": series_instance_uid}, {"_id": 1}
        )
        return found is not None
